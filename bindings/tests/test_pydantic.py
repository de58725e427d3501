"""Pydantic models as tool parameters and results (pydantic is optional)."""

from __future__ import annotations

from typing import Annotated

import pytest

import toolwire

pydantic = pytest.importorskip("pydantic")


class Order(pydantic.BaseModel):  # type: ignore[name-defined,misc]
    item: str
    quantity: int = pydantic.Field(gt=0, description="How many")


class Receipt(pydantic.BaseModel):  # type: ignore[name-defined,misc]
    order: Order
    total: float


async def test_models_in_schema_arguments_and_results(
    server_identity: toolwire.Identity, client_identity: toolwire.Identity
) -> None:
    server = toolwire.ToolServer(server_identity, allowed_clients=[client_identity.public_key])

    @server.tool
    async def buy(order: Order, price: Annotated[float, pydantic.Field(description="Unit price")]) -> Receipt:
        """Buys something."""
        assert isinstance(order, Order)
        return Receipt(order=order, total=order.quantity * price)

    schema = server.schema("buy")
    assert schema["properties"]["price"]["description"] == "Unit price"
    assert schema["properties"]["order"]["properties"]["quantity"]["description"] == "How many"
    async with server.listen() as running:
        async with toolwire.connect(running.url, identity=client_identity, server_key=running.public_key) as session:
            receipt = await session.call("buy", {"order": {"item": "tea", "quantity": 2}, "price": 1.5})
            assert receipt == {"order": {"item": "tea", "quantity": 2}, "total": 3.0}
            output = next(tool for tool in session.tools if tool.name == "buy").output_schema
            assert output is not None and "Order" in output["$defs"]
            # The schema (exclusiveMinimum) refuses it before the handler runs.
            with pytest.raises(toolwire.InvalidArgument):
                await session.call("buy", {"order": {"item": "tea", "quantity": 0}, "price": 1.5})
            # A client may send models as arguments.
            again = await session.call("buy", {"order": Order(item="cake", quantity=1), "price": 2})
            assert again["total"] == 2.0
