use medvault_testkit::e2e::send;
use medvault_testkit::fhir::{ids, observation, patient, sorted};
use serde_json::json;

use crate::MEDVAULT;

#[test]
fn patient_search_parameters() {
    let s = MEDVAULT.start();
    let mut a = patient("Müller", "Anna");
    a["identifier"] = json!([{"system": "urn:mrn", "value": "A-1"}]);
    a["birthDate"] = json!("1970-01-15");
    let a = s.create(&a);
    let mut b = patient("Mullins", "Bob");
    b["gender"] = json!("male");
    b["birthDate"] = json!("1990-06-30");
    let b = s.create(&b);
    let c = s.create(&patient("Smith", "Carla"));

    let q = |query: &str| sorted(ids(&s.get(&format!("Patient?{query}")).1));
    assert_eq!(
        q("family=mull"),
        sorted(vec![a.clone(), b.clone()]),
        "prefix, accent-insensitive"
    );
    assert_eq!(q("family=MULLER"), vec![a.clone()]);
    assert_eq!(q("family:exact=Müller"), vec![a.clone()]);
    assert_eq!(q("family:exact=muller"), Vec::<String>::new());
    assert_eq!(q("given=car"), vec![c.clone()]);
    assert_eq!(q("name=anna"), vec![a.clone()]);
    assert_eq!(q("name=mullins-and-more-than-eight"), Vec::<String>::new());
    assert_eq!(q("gender=male"), vec![b.clone()]);
    assert_eq!(q("identifier=urn:mrn|A-1"), vec![a.clone()]);
    assert_eq!(q("identifier=A-1"), vec![a.clone()]);
    assert_eq!(q("identifier=urn:other|A-1"), Vec::<String>::new());
    assert_eq!(q("birthdate=1970"), vec![a.clone()]);
    assert_eq!(q("birthdate=1970-01-15"), vec![a.clone()]);
    assert_eq!(q("birthdate=ge1980"), sorted(vec![b.clone(), c.clone()]));
    assert_eq!(q("birthdate=lt1980-05-17"), vec![a.clone()]);
    assert_eq!(
        q("birthdate=le1980-05-17"),
        sorted(vec![a.clone(), c.clone()])
    );
    assert_eq!(q("birthdate=gt1980-05-17"), vec![b.clone()]);
    assert_eq!(
        q("birthdate=ge1970&birthdate=le1980"),
        sorted(vec![a.clone(), c.clone()]),
        "repeated = AND"
    );
    assert_eq!(
        q("family=smith,mullins"),
        sorted(vec![b.clone(), c.clone()]),
        "comma = OR"
    );
    assert_eq!(
        q("family=mull&gender=female"),
        vec![a.clone()],
        "AND across parameters"
    );
    assert_eq!(
        q(&format!("_id={a},{c}")),
        sorted(vec![a.clone(), c.clone()])
    );
    assert_eq!(
        q("_lastUpdated=ge2000-01-01"),
        sorted(vec![a.clone(), b.clone(), c.clone()])
    );
    assert_eq!(q("_lastUpdated=lt2000-01-01"), Vec::<String>::new());

    // POST _search.
    let (st, v) = s.post_raw(
        "Patient/_search",
        "application/x-www-form-urlencoded",
        "family=smith".into(),
    );
    assert_eq!(st, 200);
    assert_eq!(ids(&v), vec![c.clone()]);

    // Lenient vs strict handling of unknown parameters.
    let (st, v) = s.get("Patient?family=smith&nonsense=1");
    assert_eq!(st, 200);
    assert_eq!(ids(&v), vec![c.clone()]);
    assert!(
        v["entry"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["search"]["mode"] == "outcome"),
        "warning entry"
    );
    let (st, v) = send(
        s.req(reqwest::Method::GET, "Patient?family=smith&nonsense=1")
            .header("prefer", "handling=strict"),
    );
    assert_eq!(st, 400, "{v}");
    // Invalid values are always errors.
    for bad in [
        "birthdate=notadate",
        "birthdate=ap2000",
        "identifier=|",
        "family:contains=x",
        "_count=-1",
        "_sort=family",
        "_lastUpdated=yesterday",
    ] {
        let (st, v) = s.get(&format!("Patient?{bad}"));
        assert_eq!(st, 400, "{bad}: {v}");
        assert_eq!(v["resourceType"], "OperationOutcome");
    }
}

#[test]
fn paging_links_and_sorting() {
    let s = MEDVAULT.start();
    let mut all = Vec::new();
    for i in 0..7 {
        all.push(s.create(&patient("Pager", &format!("N{i}"))));
    }
    let (_, page1) = s.get("Patient?family=pager&_count=3&_sort=_lastUpdated");
    assert_eq!(page1["total"], 7);
    assert_eq!(ids(&page1), all[..3].to_vec(), "oldest first");
    let next = page1["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = next.split("/fhir/").nth(1).unwrap();
    let (_, page2) = s.get(path);
    assert_eq!(ids(&page2), all[3..6].to_vec());
    let (_, page3) = s.get("Patient?family=pager&_count=3&_sort=_lastUpdated&_offset=6");
    assert_eq!(ids(&page3), all[6..].to_vec());
    assert!(
        !page3["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next")
    );
    let (st, huge) = s.get("Patient?family=pager&_offset=18446744073709551615");
    assert_eq!(
        (st, ids(&huge).len()),
        (200, 0),
        "an offset past the end is an empty page"
    );
    let (_, count) = s.get("Patient?family=pager&_summary=count");
    assert_eq!((count["total"].as_u64(), ids(&count).len()), (Some(7), 0));
    let (_, by_id) = s.get("Patient?_sort=-_id&_count=100");
    let got = ids(&by_id);
    let mut want = all.clone();
    want.sort();
    want.reverse();
    assert_eq!(got, want);
}

#[test]
fn clinical_search_parameters() {
    let s = MEDVAULT.start();
    let [p1, p2] = s.create_patients([("One", "P"), ("Two", "P")]);
    let o1 = s.create(&observation(&p1, "2345-7", "2024-03-01T10:00:00Z"));
    let o2 = s.create(&observation(&p1, "718-7", "2023-01-01"));
    let o3 = s.create(&observation(&p2, "2345-7", "2024-03-02"));
    let q = |query: &str| sorted(ids(&s.get(&format!("Observation?{query}")).1));
    assert_eq!(
        q(&format!("patient={p1}")),
        sorted(vec![o1.clone(), o2.clone()])
    );
    assert_eq!(q(&format!("subject=Patient/{p2}")), vec![o3.clone()]);
    assert_eq!(q(&format!("subject:Patient={p2}")), vec![o3.clone()]);
    assert_eq!(
        q("code=http://loinc.org|2345-7"),
        sorted(vec![o1.clone(), o3.clone()])
    );
    assert_eq!(q("code=718-7"), vec![o2.clone()]);
    assert_eq!(q("date=2024-03"), sorted(vec![o1.clone(), o3.clone()]));
    assert_eq!(q("date=2024-03-01"), vec![o1.clone()]);
    assert_eq!(q("date=lt2024"), vec![o2.clone()]);
    assert_eq!(
        q("status=final"),
        sorted(vec![o1.clone(), o2.clone(), o3.clone()])
    );
    assert_eq!(
        q("category=laboratory"),
        sorted(vec![o1.clone(), o2.clone(), o3.clone()])
    );
    assert_eq!(q(&format!("patient={p1}&code=2345-7")), vec![o1.clone()]);
    assert_eq!(q(&format!("patient={p1}&date=ge2024-01-01")), vec![o1]);
}
