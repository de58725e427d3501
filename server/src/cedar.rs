//! Cedar policies as the per-call authorizer (step 4 of spec section 13), behind the
//! `cedar` cargo feature.
//!
//! Every call that passed rate limits, the granted-tool check and grant validity is
//! put to the policy set as one Cedar request:
//!
//! | Cedar | value |
//! |---|---|
//! | principal | `Toolwire::Client::"<client identity key, text form>"` |
//! | action | `Toolwire::Action::"call"` |
//! | resource | `Toolwire::Tool::"<tool name>"` |
//! | `context.session_id` | the session id, 64 lowercase hex digits |
//! | `context.policy_version` | the server's policy version (a Long) |
//! | `context.grant` | present only for a call that relies on a grant: `{ id, tools, scope }` |
//! | `context.args` | the call's arguments as a Cedar record (from their JSON form) |
//!
//! ```cedar
//! permit(principal == Toolwire::Client::"kJz…", action, resource == Toolwire::Tool::"search");
//! permit(principal, action, resource == Toolwire::Tool::"read_file")
//!   when { context has grant && context.grant.scope.contains("read") };
//! forbid(principal, action, resource == Toolwire::Tool::"read_file")
//!   when { context.args.path like "/etc/*" };
//! ```
//!
//! **Fail closed.** Cedar skips a policy whose evaluation errors, so a `forbid` that
//! errors would silently stop forbidding. This authorizer therefore denies a call when
//! any policy errored, when its arguments cannot be expressed in Cedar (Cedar has no
//! floating-point numbers) or nest deeper than [`MAX_ARGS_DEPTH`]. The deny reason
//! names the cause and goes to the decision record and audit log, never to the peer.
//!
//! **Policy changes** take effect on the very next call: [`CedarAuthorizer::reload`]
//! swaps the policy set (and entities) atomically on every clone of the authorizer,
//! and keeps the old set when the new text does not parse.

use crate::tool::decode_args;
use cedar_policy::{
    Context, Decision as CedarDecision, Entities, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request,
};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use toolwire_protocol::authz::{AuthorizationRequest, Authorizer, Decision};

/// Deepest nesting of call arguments handed to Cedar (the outermost value is level
/// 1), as for msgpack messages (CNV-013).
pub const MAX_ARGS_DEPTH: usize = 32;

/// Why Cedar policies or entities were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CedarError {
    /// The policy text does not parse.
    #[error("Cedar policies do not parse: {0}")]
    Policies(String),
    /// The entities JSON does not parse.
    #[error("Cedar entities do not parse: {0}")]
    Entities(String),
}

struct Loaded {
    policies: PolicySet,
    entities: Entities,
}

/// An [`Authorizer`] that decides each call with Cedar policies. Clones share the
/// policy set, so the handle kept by the application can [`reload`](Self::reload)
/// the one the server uses.
#[derive(Clone)]
pub struct CedarAuthorizer {
    loaded: Arc<RwLock<Arc<Loaded>>>,
    types: Arc<EntityTypes>,
}

impl std::fmt::Debug for CedarAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CedarAuthorizer").finish_non_exhaustive()
    }
}

struct EntityTypes {
    client: EntityTypeName,
    tool: EntityTypeName,
    call: EntityUid,
}

impl CedarAuthorizer {
    /// An authorizer with these policies (Cedar policy language) and no entities.
    ///
    /// # Errors
    /// [`CedarError::Policies`] when the text does not parse.
    pub fn new(policies: &str) -> Result<Self, CedarError> {
        let loaded = load(policies, None)?;
        let type_name = |name: &str| {
            EntityTypeName::from_str(name).map_err(|error| CedarError::Policies(error.to_string()))
        };
        let types = EntityTypes {
            client: type_name("Toolwire::Client")?,
            tool: type_name("Toolwire::Tool")?,
            call: EntityUid::from_type_name_and_id(
                type_name("Toolwire::Action")?,
                EntityId::new("call"),
            ),
        };
        Ok(Self {
            loaded: Arc::new(RwLock::new(Arc::new(loaded))),
            types: Arc::new(types),
        })
    }

    /// The same policies with entities (Cedar entities JSON), for policies that use
    /// attributes or groups (`principal in Toolwire::Team::"ops"`).
    ///
    /// # Errors
    /// [`CedarError::Entities`] when the JSON does not parse.
    pub fn with_entities_json(self, entities_json: &str) -> Result<Self, CedarError> {
        let policies = self.current().policies.clone();
        let entities = parse_entities(entities_json)?;
        self.swap(Loaded { policies, entities });
        Ok(self)
    }

    /// Replaces the policies (and, when given, the entities) for every later call,
    /// on every clone of this authorizer. On error nothing changes.
    ///
    /// # Errors
    /// [`CedarError`] when the policies or the entities do not parse.
    pub fn reload(&self, policies: &str, entities_json: Option<&str>) -> Result<(), CedarError> {
        let loaded = load(policies, entities_json)?;
        self.swap(loaded);
        Ok(())
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn swap(&self, loaded: Loaded) {
        *self
            .loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(loaded);
    }

    fn request(&self, request: &AuthorizationRequest<'_>) -> Result<Request, String> {
        let args = decode_args(request.args)?;
        if depth(&args) > MAX_ARGS_DEPTH {
            return Err(format!(
                "arguments nest deeper than {MAX_ARGS_DEPTH} levels for Cedar"
            ));
        }
        let mut context = serde_json::json!({
            "session_id": request
                .session_id
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect::<String>(),
            "policy_version": i64::try_from(request.policy_version).unwrap_or(i64::MAX),
            "args": args,
        });
        if let Some(grant) = request.grant {
            context["grant"] = serde_json::json!({
                "id": grant.id,
                "tools": grant.tools,
                "scope": grant.scope,
            });
        }
        let context = Context::from_json_value(context, None)
            .map_err(|error| format!("arguments cannot be expressed in Cedar: {error}"))?;
        let principal = EntityUid::from_type_name_and_id(
            self.types.client.clone(),
            EntityId::new(request.client.to_string()),
        );
        let resource =
            EntityUid::from_type_name_and_id(self.types.tool.clone(), EntityId::new(request.tool));
        Request::new(principal, self.types.call.clone(), resource, context, None)
            .map_err(|error| format!("Cedar request invalid: {error}"))
    }
}

impl Authorizer for CedarAuthorizer {
    fn authorize(&self, request: &AuthorizationRequest<'_>) -> Decision {
        let cedar_request = match self.request(request) {
            Ok(cedar_request) => cedar_request,
            Err(reason) => return Decision::deny(reason),
        };
        let loaded = self.current();
        let response = cedar_policy::Authorizer::new().is_authorized(
            &cedar_request,
            &loaded.policies,
            &loaded.entities,
        );
        let diagnostics = response.diagnostics();
        let errored: Vec<String> = diagnostics
            .errors()
            .map(|error| error.to_string())
            .collect();
        if !errored.is_empty() {
            // Fail closed: an erroring `forbid` must not turn into an allow.
            return Decision::deny(format!(
                "Cedar policy evaluation failed: {}",
                errored.join("; ")
            ));
        }
        let policies: Vec<String> = diagnostics.reason().map(ToString::to_string).collect();
        match response.decision() {
            CedarDecision::Allow => Decision::Allow,
            CedarDecision::Deny if policies.is_empty() => {
                Decision::deny("no Cedar policy permits this call")
            }
            CedarDecision::Deny => {
                Decision::deny(format!("forbidden by Cedar policy {}", policies.join(", ")))
            }
        }
    }
}

fn load(policies: &str, entities_json: Option<&str>) -> Result<Loaded, CedarError> {
    let policies = with_annotated_ids(
        PolicySet::from_str(policies).map_err(|error| CedarError::Policies(error.to_string()))?,
    )?;
    let entities = match entities_json {
        Some(json) => parse_entities(json)?,
        None => Entities::empty(),
    };
    Ok(Loaded { policies, entities })
}

/// Names each policy by its `@id("...")` annotation, when it has one, so that deny
/// reasons read `forbidden by Cedar policy no-secrets` rather than `policy1`. A set
/// with templates is kept as parsed.
fn with_annotated_ids(parsed: PolicySet) -> Result<PolicySet, CedarError> {
    if parsed.templates().next().is_some() {
        return Ok(parsed);
    }
    let mut named = PolicySet::new();
    for policy in parsed.policies() {
        let policy = match policy.annotation("id") {
            Some(id) => policy.new_id(PolicyId::new(id)),
            None => policy.clone(),
        };
        named
            .add(policy)
            .map_err(|error| CedarError::Policies(error.to_string()))?;
    }
    Ok(named)
}

fn parse_entities(json: &str) -> Result<Entities, CedarError> {
    Entities::from_json_str(json, None).map_err(|error| CedarError::Entities(error.to_string()))
}

/// Nesting depth of a JSON value (a scalar is 1), computed without recursion so that
/// hostile arguments cannot exhaust the stack here either.
fn depth(value: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 1usize)];
    while let Some((value, level)) = pending.pop() {
        deepest = deepest.max(level);
        match value {
            serde_json::Value::Array(items) => {
                pending.extend(items.iter().map(|item| (item, level + 1)));
            }
            serde_json::Value::Object(fields) => {
                pending.extend(fields.values().map(|item| (item, level + 1)));
            }
            _ => {}
        }
    }
    deepest
}
