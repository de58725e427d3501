"""JSON Schemas from type hints, argument conversion, and JSON encoding of results.

Plain type hints need nothing but the standard library: ``str``, ``int``, ``float``,
``bool``, ``None``, ``list[T]``, ``tuple[...]``, ``set[T]``, ``dict[str, T]``,
``T | None`` and other unions, ``Literal[...]``, enums, ``TypedDict``\\ s and
dataclasses. ``Annotated[T, "description"]`` (or any metadata with a
``description`` attribute, such as ``pydantic.Field(description=...)``) describes a
parameter. Pydantic models are used when pydantic is installed: their
``model_json_schema()`` is embedded, incoming arguments are validated into the model,
and returned models are dumped with ``mode="json"``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import inspect
import types
import typing
from typing import Any

try:  # pydantic is optional
    import pydantic

    _BaseModel: type | None = pydantic.BaseModel
    _ValidationError: tuple[type[Exception], ...] = (pydantic.ValidationError,)
except ImportError:  # pragma: no cover - exercised only without pydantic
    _BaseModel = None
    _ValidationError = ()


class ArgumentError(ValueError):
    """Arguments that the schema accepted but that do not convert to the
    parameter types (answered INVALID_ARGUMENT)."""


#: Exceptions raised while converting arguments, answered INVALID_ARGUMENT.
CONVERSION_ERRORS: tuple[type[Exception], ...] = (ArgumentError, *_ValidationError)

#: Exceptions that make ``convert`` try the next member of a union.
_NOT_THIS_MEMBER: tuple[type[Exception], ...] = (*CONVERSION_ERRORS, TypeError, ValueError)

_NONE_TYPES = (None, type(None))


def _is_model(annotation: Any) -> bool:
    return _BaseModel is not None and isinstance(annotation, type) and issubclass(annotation, _BaseModel)


def _is_typeddict(annotation: Any) -> bool:
    return isinstance(annotation, type) and typing.is_typeddict(annotation)


def _description(metadata: tuple[Any, ...]) -> str | None:
    for item in metadata:
        if isinstance(item, str):
            return item
        description = getattr(item, "description", None)
        if isinstance(description, str):
            return description
    return None


class _Builder:
    """Builds one schema, collecting the ``$defs`` of embedded pydantic models."""

    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}

    def schema(self, annotation: Any) -> dict[str, Any]:
        if annotation is inspect.Parameter.empty or annotation is Any:
            return {}
        if annotation in _NONE_TYPES:
            return {"type": "null"}
        if annotation is bool:
            return {"type": "boolean"}
        if annotation is int:
            return {"type": "integer"}
        if annotation is float:
            return {"type": "number"}
        if annotation is str:
            return {"type": "string"}
        if annotation in (list, tuple, set, frozenset):
            return {"type": "array"}
        if annotation is dict:
            return {"type": "object"}
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            return {"enum": [member.value for member in annotation]}
        if _is_model(annotation):
            schema = dict(annotation.model_json_schema(ref_template="#/$defs/{model}"))
            self.defs.update(schema.pop("$defs", {}))
            return schema
        if _is_typeddict(annotation):
            hints = typing.get_type_hints(annotation, include_extras=True)
            return {
                "type": "object",
                "properties": {name: self.schema(hint) for name, hint in hints.items()},
                "required": sorted(annotation.__required_keys__),
            }
        if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
            hints = typing.get_type_hints(annotation, include_extras=True)
            fields = dataclasses.fields(annotation)
            return {
                "type": "object",
                "properties": {field.name: self.schema(hints[field.name]) for field in fields},
                "required": [
                    field.name
                    for field in fields
                    if field.default is dataclasses.MISSING
                    and field.default_factory is dataclasses.MISSING
                ],
                "additionalProperties": False,
            }
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is typing.Annotated:
            schema = self.schema(args[0])
            description = _description(args[1:])
            if description is not None:
                schema = {**schema, "description": description}
            return schema
        if origin is typing.Literal:
            return {"enum": [arg.value if isinstance(arg, enum.Enum) else arg for arg in args]}
        if origin in (typing.Union, types.UnionType):
            return {"anyOf": [self.schema(arg) for arg in args]}
        if origin in (list, set, frozenset, collections.abc.Sequence, collections.abc.Set,
                      collections.abc.MutableSequence, collections.abc.Iterable):
            schema = {"type": "array", "items": self.schema(args[0]) if args else {}}
            if origin in (set, frozenset, collections.abc.Set):
                schema["uniqueItems"] = True
            return schema
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return {"type": "array", "items": self.schema(args[0])}
            if args == ((),):
                return {"type": "array", "maxItems": 0}
            return {
                "type": "array",
                "prefixItems": [self.schema(arg) for arg in args],
                "items": False,
                "minItems": len(args),
            }
        if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
            if args and args[0] is not str:
                raise TypeError(f"JSON object keys are strings, not {args[0]!r}")
            return {"type": "object", "additionalProperties": self.schema(args[1]) if args else {}}
        raise TypeError(f"no JSON Schema for the type {annotation!r}")

    def finish(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self.defs:
            schema = {**schema, "$defs": dict(self.defs)}
        return schema


def is_context(annotation: Any, context_type: type) -> bool:
    """Whether a parameter annotated ``annotation`` receives the call context."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation is context_type


@dataclasses.dataclass(frozen=True)
class Signature:
    """What the server needs to know about a handler's parameters."""

    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    #: Parameter name → annotation, for the parameters the caller supplies.
    parameters: dict[str, Any]
    #: The parameter that receives the call context, if any.
    context_parameter: str | None


def describe(fn: Any, context_type: type) -> Signature:
    """The input schema (an object, one property per parameter), output schema and
    parameters of the handler ``fn``."""
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    builder = _Builder()
    properties: dict[str, Any] = {}
    required: list[str] = []
    parameters: dict[str, Any] = {}
    context_parameter: str | None = None
    for name, parameter in signature.parameters.items():
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(f"{fn.__qualname__}: *args and **kwargs cannot be described by a schema")
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise TypeError(f"{fn.__qualname__}: parameter {name} is positional-only")
        annotation = hints.get(name, inspect.Parameter.empty)
        if is_context(annotation, context_type):
            context_parameter = name
            continue
        try:
            schema = builder.schema(annotation)
        except TypeError as error:
            raise TypeError(f"{fn.__qualname__}: parameter {name}: {error}") from None
        if parameter.default is inspect.Parameter.empty:
            required.append(name)
        else:
            try:
                schema = {**schema, "default": to_json(parameter.default)}
            except TypeError:
                pass
        properties[name] = schema
        parameters[name] = annotation
    input_schema = builder.finish(
        {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        }
    )
    return Signature(input_schema, _output_schema(fn, hints), parameters, context_parameter)


def _output_schema(fn: Any, hints: dict[str, Any]) -> dict[str, Any] | None:
    annotation = hints.get("return", inspect.Parameter.empty)
    if (
        annotation is inspect.Parameter.empty
        or annotation is Any
        or annotation in _NONE_TYPES
        or inspect.isasyncgenfunction(fn)
        or inspect.isgeneratorfunction(fn)
    ):
        return None
    builder = _Builder()
    try:
        return builder.finish(builder.schema(annotation))
    except TypeError:
        return None


def convert(annotation: Any, value: Any) -> Any:
    """``value`` (decoded JSON) as the parameter type: models, dataclasses, enums,
    tuples and sets are constructed; everything else is passed through."""
    if value is None:
        return None
    if _is_model(annotation):
        return annotation.model_validate(value)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(value)
        except ValueError as error:
            raise ArgumentError(str(error)) from None
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        hints = typing.get_type_hints(annotation, include_extras=True)
        try:
            return annotation(**{key: convert(hints.get(key, Any), item) for key, item in value.items()})
        except TypeError as error:
            raise ArgumentError(str(error)) from None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return convert(args[0], value)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg in _NONE_TYPES:
                continue
            try:
                return convert(arg, value)
            except _NOT_THIS_MEMBER:
                continue
        return value
    if origin in (list, collections.abc.Sequence, collections.abc.MutableSequence) and args:
        return [convert(args[0], item) for item in value]
    if origin in (set, frozenset, collections.abc.Set):
        items = (convert(args[0], item) for item in value) if args else iter(value)
        return frozenset(items) if origin is frozenset else set(items)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(args[0], item) for item in value)
        return tuple(convert(arg, item) for arg, item in zip(args, value))
    if annotation is tuple:
        return tuple(value)
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping) and len(args) == 2:
        return {key: convert(args[1], item) for key, item in value.items()}
    return value


def to_json(value: Any) -> Any:
    """``value`` as plain JSON data: pydantic models, dataclasses, enums, tuples
    and sets are converted; anything else not JSON raises ``TypeError``."""
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if _BaseModel is not None and isinstance(value, _BaseModel):
        return typing.cast(Any, value).model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: to_json(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {_key(key): to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(item) for item in value]
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, enum.Enum) and isinstance(key.value, str):
        return key.value
    raise TypeError(f"JSON object keys are strings, not {type(key).__name__}")
