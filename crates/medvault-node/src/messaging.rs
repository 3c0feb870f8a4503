//! FHIR messaging: `POST /fhir/$process-message` takes a `message` Bundle (a MessageHeader
//! first: ADT, order and other events), stores it as it came (a Bundle, sealed like any other
//! under the patient its header's focus names), and answers with a response message. The
//! message's resources are not applied to the record: what an event means for the record is the
//! receiving workflow's to decide, reading the stored message. A message sent again (the same
//! Bundle id with the same content) is answered again without being stored twice.

use medvault_auth::scopes::Interaction;
use medvault_core::{ResourceId, ResourceType};
use medvault_store::StoreTx;
use serde_json::{Value, json};

use crate::ctx::Ctx;
use crate::error::{Error, ErrorKind, IssueCode};
use crate::ops::{self, Outcome};

const BUNDLE: ResourceType = ResourceType::from_static("Bundle");

/// Checks a message Bundle's shape; its id (the message id).
///
/// # Errors
/// 400 naming what is wrong.
pub fn check(message: &Value) -> Result<ResourceId, Error> {
    let bad = |text: &str| Error::bad_request(format!("$process-message: {text}"));
    if message.get("resourceType").and_then(Value::as_str) != Some("Bundle")
        || message.get("type").and_then(Value::as_str) != Some("message")
    {
        return Err(bad("the body must be a Bundle of type message"));
    }
    let first = message
        .get("entry")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
        .ok_or_else(|| bad("the message has no entries"))?;
    let header = first
        .get("resource")
        .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("MessageHeader"))
        .ok_or_else(|| bad("the first entry must be a MessageHeader"))?;
    if header.get("eventCoding").is_none() && header.get("eventUri").is_none() {
        return Err(bad(
            "the MessageHeader names no event (eventCoding or eventUri)",
        ));
    }
    if header
        .pointer("/source/endpoint")
        .and_then(Value::as_str)
        .is_none()
    {
        return Err(bad("the MessageHeader names no source.endpoint"));
    }
    let id = message
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("the message Bundle needs an id (the message id)"))?;
    ResourceId::new(id).map_err(|_| bad("the message id is not a valid id"))
}

/// Stores the message (inside `tx`) and builds the response message.
///
/// # Errors
/// 409 when a different message was stored under the same id; as a create otherwise.
pub fn process(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    message: Value,
    base: &str,
) -> Result<Outcome, Error> {
    let id = check(&message)?;
    let stored = match crate::records::read(&*tx, ctx, &BUNDLE, &id, None) {
        Ok(o) => o.resource,
        Err(e) if e.kind == ErrorKind::NotFound || e.kind == ErrorKind::Gone => None,
        Err(e) => return Err(e),
    };
    let location = match stored {
        Some(prior) if same_message(&prior, &message) => None,
        Some(_) => {
            return Err(Error::new(
                ErrorKind::Conflict,
                IssueCode::Duplicate,
                "another message was received under this message id",
            ));
        }
        None => {
            let mut p = ops::prepare(&*tx, ctx, &BUNDLE, id.clone(), message.clone(), false)?;
            ops::authorize_write(&*tx, ctx, &mut p, Interaction::Create)?;
            ops::update(tx, ctx, p, None)?.location
        }
    };
    let header = message
        .pointer("/entry/0/resource")
        .cloned()
        .unwrap_or(Value::Null);
    let now = crate::clock::instant(ctx.clock.now_micros());
    let mut response_header = json!({
        "resourceType": "MessageHeader",
        "id": uuid::Uuid::new_v4().to_string(),
        "source": {"name": "medvault", "endpoint": base},
        "destination": [{"endpoint": header.pointer("/source/endpoint").cloned().unwrap_or(Value::Null)}],
        "response": {"identifier": id.as_str(), "code": "ok"},
    });
    for field in ["eventCoding", "eventUri"] {
        if let Some(v) = header.get(field) {
            response_header[field] = v.clone();
        }
    }
    let response = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "message",
        "timestamp": now,
        "entry": [{
            "fullUrl": format!("urn:uuid:{}", response_header["id"].as_str().unwrap_or_default()),
            "resource": response_header,
        }],
    });
    Ok(Outcome {
        status: http::StatusCode::OK,
        resource: Some(response),
        location,
        version: None,
        last_modified: None,
        key_name: None,
    })
}

/// The same message: equal but for what the node adds on storing it (`meta`).
fn same_message(stored: &Value, received: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("meta");
        }
        v
    };
    strip(stored) == strip(received)
}
