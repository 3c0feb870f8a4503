//! A registered peer that builds its own bundles (compromised, or simply buggy) must not be able
//! to attach data to the receiver's existing records, grant itself access through a CareTeam,
//! update or delete anything, or replay a bundle: the receiver confines every bundle to one new
//! patient's record, whatever the sender's code did.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use medvault_core::ResourceType;
use medvault_crypto::seal_bundle;
use medvault_node::share::{self, FORMAT, Party, Refusal, ShareHeader};
use medvault_testkit::TwoNodes;
use serde_json::{Value, json};

/// What the tests do with the two nodes: A seals what it likes, B receives it.
trait FromAToB {
    /// A bundle from A to B with any payload A likes.
    fn seal(&self, payload: &Value) -> Vec<u8>;
    /// B receives `bytes`.
    fn receive(&self, bytes: &[u8]) -> Result<share::Imported, Refusal>;
    /// B's current `rt/id`, if B has it.
    fn read(&self, rt: &str, id: &str) -> Option<Value>;
}

impl FromAToB for TwoNodes {
    fn seal(&self, payload: &Value) -> Vec<u8> {
        let now = self.a.clock.now_micros();
        let header = ShareHeader {
            format: FORMAT.into(),
            id: uuid::Uuid::new_v4().to_string(),
            sender: Party {
                node: self.a_id.node.clone(),
                fingerprint: self.a_id.fingerprint(),
            },
            recipient: Party {
                node: self.b_id.node.clone(),
                fingerprint: self.b_id.fingerprint(),
            },
            purpose: "TREAT".into(),
            created: medvault_node::clock::instant(now),
            expires: medvault_node::clock::instant(now + 3_600_000_000),
            sender_leaf: 0,
        };
        seal_bundle(
            &serde_json::to_vec(&header).unwrap(),
            &serde_json::to_vec(payload).unwrap(),
            &self.b_id.kem.public_key(),
            &self.a_id.signing,
        )
        .unwrap()
    }

    fn receive(&self, bytes: &[u8]) -> Result<share::Imported, Refusal> {
        let ctx = medvault_node::ops::Ctx::unrestricted_node_work(&self.b);
        share::receive(&self.b, &ctx, bytes, None, &json!({"test": true})).map_err(|r| r.refusal)
    }

    fn read(&self, rt: &str, id: &str) -> Option<Value> {
        let ctx = medvault_node::ops::Ctx::unrestricted_node_work(&self.b);
        let rt = ResourceType::new(rt).unwrap();
        let id = medvault_core::ResourceId::new(id).unwrap();
        medvault_node::ops::read(self.b.store.as_ref(), &ctx, &rt, &id, None)
            .ok()
            .and_then(|o| o.resource)
    }
}

fn entry(url: &str, resource: Value) -> Value {
    let rt = resource["resourceType"].as_str().unwrap().to_owned();
    json!({"fullUrl": url, "resource": resource, "request": {"method": "POST", "url": rt}})
}

fn transaction(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn patient(url: &str) -> Value {
    entry(
        url,
        json!({"resourceType": "Patient", "name": [{"family": "Peerfam"}]}),
    )
}

#[test]
fn a_peer_cannot_reach_beyond_the_patient_it_sends() {
    let t = TwoNodes::new();
    // A first, honest bundle gives B a patient of its own.
    let first = t
        .receive(&t.seal(&transaction(vec![patient("urn:uuid:p")])))
        .unwrap();
    let existing = first.patient.clone();
    assert!(
        t.read("Patient", &existing).is_some(),
        "the import names the new Patient's id"
    );

    let tags = &t.read("Patient", &existing).unwrap()["meta"]["tag"];
    assert_eq!(tags[0]["system"], "urn:medvault:shared-from");
    assert_eq!(
        tags[0]["code"],
        t.a_id.node.as_str(),
        "marked as another node's record"
    );

    // A contained-style reference that names a stored patient (`#/Patient/<id>`) in a field
    // that does not decide the compartment: kept only as a logical reference.
    let sneaky = transaction(vec![
        patient("urn:uuid:ps"),
        entry(
            "urn:uuid:os",
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                   "subject": {"reference": "urn:uuid:ps"},
                   "performer": [{"reference": format!("#/Patient/{existing}")}]}),
        ),
    ]);
    t.receive(&t.seal(&sneaky)).unwrap();
    let found = medvault_node::search::search_bundle(
        t.b.store.as_ref(),
        &medvault_node::ops::Ctx::unrestricted_node_work(&t.b),
        &ResourceType::from_static("Observation"),
        &[("performer".into(), format!("Patient/{existing}"))],
        true,
        "",
    )
    .unwrap();
    assert_eq!(found["total"], 0, "{found}");

    // An observation aimed at B's existing patient: refused, nothing kept.
    let aimed = transaction(vec![
        patient("urn:uuid:p2"),
        entry(
            "urn:uuid:o",
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                   "subject": {"reference": format!("Patient/{existing}")}}),
        ),
    ]);
    let r = t.receive(&t.seal(&aimed)).unwrap_err();
    assert!(
        matches!(&r, Refusal::Invalid(m) if m.contains("does not belong")),
        "{r}"
    );

    // Directory data (a Practitioner of B's, an Organization): outside the patient's record.
    let directory = transaction(vec![
        patient("urn:uuid:p3"),
        entry(
            "urn:uuid:d",
            json!({"resourceType": "Practitioner", "name": [{"family": "X"}]}),
        ),
    ]);
    assert!(matches!(
        t.receive(&t.seal(&directory)),
        Err(Refusal::Invalid(_))
    ));

    // A CareTeam naming one of B's practitioners is kept, but as a logical reference only: it
    // cannot create a care relationship at B.
    let team = transaction(vec![
        patient("urn:uuid:p4"),
        entry(
            "urn:uuid:t",
            json!({"resourceType": "CareTeam", "status": "active",
                   "subject": {"reference": "urn:uuid:p4"},
                   "participant": [{"member": {"reference": "Practitioner/b-local-dr"}}]}),
        ),
    ]);
    let imported = t.receive(&t.seal(&team)).unwrap();
    assert_eq!(imported.resources, 2);
    let found = medvault_node::search::search_bundle(
        t.b.store.as_ref(),
        &medvault_node::ops::Ctx::unrestricted_node_work(&t.b),
        &ResourceType::from_static("CareTeam"),
        &[("patient".into(), format!("Patient/{}", imported.patient))],
        true,
        "",
    )
    .unwrap();
    let member = &found["entry"][0]["resource"]["participant"][0]["member"];
    assert_eq!(member.get("reference"), None, "{found}");
    assert_eq!(
        member["identifier"],
        json!({"system": format!("urn:medvault:node:{}", t.a_id.node), "value": "Practitioner/b-local-dr"})
    );

    // Updates, deletes, conditional creates, duplicate full URLs, dangling urn references.
    let put = json!({"fullUrl": "urn:uuid:u", "resource": {"resourceType": "Patient", "id": existing},
                     "request": {"method": "PUT", "url": format!("Patient/{existing}")}});
    let delete = json!({"request": {"method": "DELETE", "url": format!("Patient/{existing}")}});
    let mut conditional = patient("urn:uuid:c");
    conditional["request"]["ifNoneExist"] = json!("family=Peerfam");
    let dangling = transaction(vec![
        patient("urn:uuid:p5"),
        entry(
            "urn:uuid:o5",
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                   "subject": {"reference": "urn:uuid:nowhere"}}),
        ),
    ]);
    for bad in [
        transaction(vec![patient("urn:uuid:p6"), put]),
        transaction(vec![patient("urn:uuid:p7"), delete]),
        transaction(vec![conditional]),
        transaction(vec![patient("urn:uuid:d"), patient("urn:uuid:d")]),
        dangling,
    ] {
        let r = t.receive(&t.seal(&bad)).unwrap_err();
        assert!(matches!(r, Refusal::Invalid(_)), "{r}");
    }
    assert_eq!(
        t.read("Patient", &existing).unwrap()["name"][0]["family"],
        "Peerfam",
        "B's patient untouched"
    );

    // The same bundle twice: the second is a replay.
    let once = t.seal(&transaction(vec![patient("urn:uuid:p8")]));
    t.receive(&once).unwrap();
    assert_eq!(t.receive(&once).unwrap_err(), Refusal::Replay);
}
