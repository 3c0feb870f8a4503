//! `GET /fhir/metadata`: a CapabilityStatement built from what the node actually serves.

use serde_json::{Value, json};

use medvault_fhir::Fhir;

const INTERACTIONS: [&str; 9] = [
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];

/// Builds the CapabilityStatement.
pub fn statement(fhir: &Fhir, base: &str, now: &str) -> Value {
    let resources: Vec<Value> = fhir
        .types()
        .iter()
        .map(|(name, info)| {
            let mut params: Vec<Value> = vec![
                json!({"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"}),
                json!({"name": "_lastUpdated", "type": "date", "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"}),
            ];
            params.extend(info.params.values().map(|p| {
                json!({"name": p.code, "type": p.kind.as_fhir(), "definition": p.url})
            }));
            let interactions: Vec<Value> = INTERACTIONS.iter().map(|c| json!({"code": c})).collect();
            let includes: Vec<String> = info
                .params
                .values()
                .filter(|p| p.kind == medvault_fhir::ParamKind::Reference)
                .map(|p| format!("{name}:{}", p.code))
                .collect();
            // Every reference parameter of every type that can point here.
            let revincludes = fhir.revincludes(name);
            let mut operations = vec![
                json!({"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}),
                json!({"name": "meta", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-meta"}),
                json!({"name": "meta-add", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-meta-add"}),
                json!({"name": "meta-delete", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-meta-delete"}),
            ];
            if name.as_str() == "Patient" {
                operations.push(json!({"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}));
            }
            json!({
                "type": name.as_str(),
                "interaction": interactions,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "searchInclude": includes,
                "searchRevInclude": revincludes,
                "searchParam": params,
                "operation": operations,
            })
        })
        .chain(std::iter::once(json!({
            "type": "AuditEvent",
            "documentation": "The audit trail, read-only: one AuditEvent per request and per administrative action, each backed by a leaf of the node's transparency log (the id names the leaf). Readable by the admin and auditor roles. Newest first; _before continues a search.",
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [
                {"name": "patient", "type": "reference", "definition": "http://hl7.org/fhir/SearchParameter/AuditEvent-patient"},
                {"name": "agent", "type": "reference", "documentation": "the token id (tok_…) of the requesting credential", "definition": "http://hl7.org/fhir/SearchParameter/AuditEvent-agent"},
                {"name": "date", "type": "date", "definition": "http://hl7.org/fhir/SearchParameter/AuditEvent-date"},
                {"name": "outcome", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/AuditEvent-outcome"},
            ],
        })))
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now,
        "kind": "instance",
        "software": {"name": "medvault", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "medvault encrypted FHIR R4 record store", "url": base},
        "fhirVersion": medvault_fhir::FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": "Records are sealed per patient (AES-256-GCM); search runs over blind indexes. Search supports string (prefix, :exact, :contains), token (:not, :of-type), reference, date (eq, gt, lt, ge, le, sa, eb), number and quantity (also ne and ap, with the precision the value is written to; quantities by system|code or unit), uri (exact, :below, :above) and composite parameters, :missing, chains and _has, _include/_revinclude (:iterate), _id, _lastUpdated, _tag, _security, _profile, _count, _offset, _sort (any parameter), _total, _summary and _elements; unknown parameters are ignored unless Prefer: handling=strict. Bulk Data export (system, Patient, Group) and Subscriptions (rest-hook, backport notifications) are offered.",
            "security": {
                "cors": false,
                "service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"
                }]}],
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": format!("{}/auth/token", base.strip_suffix("/fhir").unwrap_or(base))}]
                }],
                "description": "Bearer credentials in the Authorization header: SMART Backend Services access tokens (POST /auth/token, client_credentials with private_key_jwt; see .well-known/smart-configuration), login sessions of people (POST /auth/login with a password and a second factor), or API tokens (medvault token create). Every request is recorded in a tamper-evident access log (see /ledger/access/checkpoint)."
            },
            "resource": resources,
            "interaction": [{"code": "batch"}, {"code": "transaction"}],
            "operation": [
                {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"},
                {"name": "process-message", "definition": "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message"},
            ],
        }],
    })
}
