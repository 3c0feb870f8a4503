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
        "family:text=x",
        "_count=-1",
        "_sort=nonesuch",
        "_sort=-",
        "_total=maybe",
        "_page:missing=0123456789abcdef0123456789abcdef",
        "_count:exact=3",
        "gender:missing=perhaps",
        "general-practitioner.nonesuch=x",
        "organization:Patient.name=x",
        "_has:Observation:nonesuch:code=x",
        "_has:Observation:patient",
        "_has:Observation:patient:nonesuch=x",
        "_has:Observation:patient:_sort=x",
        "link:Patient.link:Patient.link:Patient.link:Patient.family=x",
        "_include=Observation:subject",
        "_include=Patient:nonesuch",
        "_revinclude=Observation:performer:Organization",
        "_include:deep=Patient:organization",
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

#[test]
fn chains_has_and_reverse_includes() {
    let s = MEDVAULT.start();
    let mut a = patient("Chainfam", "Ada");
    a["identifier"] = json!([{"system": "urn:mrn", "value": "C-1"}]);
    let a = s.create(&a);
    let b = s.create(&patient("Otherfam", "Bo"));
    let org = s.create(&json!({"resourceType": "Organization", "name": "Chain Clinic"}));
    let enc = s.create(&json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{a}")},
        "serviceProvider": {"reference": format!("Organization/{org}")}}));
    let mut oa = observation(&a, "2345-7", "2024-03-01");
    oa["encounter"] = json!({"reference": format!("Encounter/{enc}")});
    let oa = s.create(&oa);
    let ob = s.create(&observation(&b, "718-7", "2024-03-02"));
    let q = |query: &str| {
        let (st, v) = s.get(query);
        assert_eq!(st, 200, "{query}: {v}");
        sorted(ids(&v))
    };
    // Chains, with and without the target type, on an identifier, and two hops.
    assert_eq!(
        q("Observation?subject:Patient.family=chainfam"),
        vec![oa.clone()]
    );
    assert_eq!(q("Observation?patient.family=chainfam"), vec![oa.clone()]);
    assert_eq!(
        q("Observation?patient.identifier=urn:mrn|C-1"),
        vec![oa.clone()]
    );
    assert_eq!(q("Observation?patient.family=nobody"), Vec::<String>::new());
    assert_eq!(
        q("Observation?encounter.service-provider.name=chain"),
        vec![oa.clone()],
        "two hops"
    );
    assert_eq!(
        q("Observation?patient.family=chainfam,otherfam&code=718-7"),
        vec![ob.clone()]
    );
    // _has, nested.
    assert_eq!(
        q("Patient?_has:Observation:patient:code=2345-7"),
        vec![a.clone()]
    );
    assert_eq!(
        q("Patient?_has:Observation:patient:code=718-7,2345-7"),
        sorted(vec![a.clone(), b.clone()])
    );
    assert_eq!(
        q("Organization?_has:Encounter:service-provider:_has:Observation:encounter:code=2345-7"),
        vec![org.clone()]
    );
    assert_eq!(
        q("Patient?_has:Observation:patient:code=0000-0"),
        Vec::<String>::new()
    );
    // _include (also `*`), _revinclude and :iterate.
    let (_, v) = s.get(&format!("Patient?_id={a}&_revinclude=Observation:patient"));
    assert_eq!(ids(&v), vec![a.clone(), oa.clone()]);
    assert_eq!(
        (v["total"].as_u64(), &v["entry"][1]["search"]["mode"]),
        (Some(1), &json!("include"))
    );
    let (_, v) = s.get(&format!(
        "Patient?_id={a}&_revinclude=Observation:patient&_include:iterate=Observation:encounter&_include:iterate=Encounter:service-provider"
    ));
    assert_eq!(
        ids(&v),
        vec![a.clone(), oa.clone(), enc.clone(), org.clone()],
        "{v}"
    );
    let (_, v) = s.get(&format!("Observation?_id={oa}&_include=Observation:*"));
    assert_eq!(
        sorted(ids(&v)),
        sorted(vec![oa.clone(), a.clone(), enc.clone()])
    );
    let (_, v) = s.get(&format!(
        "Observation?_id={oa}&_include=Observation:subject:Group"
    ));
    assert_eq!(ids(&v), vec![oa.clone()], "target type filters");
}

#[test]
fn sorting_modifiers_composites_and_totals() {
    let s = MEDVAULT.start();
    let mut ids_by_name = Vec::new();
    for (family, born, gender) in [
        ("Sortc", "1990-01-01", Some("female")),
        ("Sorta", "1980-01-01", None),
        ("Sortb", "1985-01-01", Some("male")),
    ] {
        let mut p = patient(family, "X");
        p["birthDate"] = json!(born);
        match gender {
            Some(g) => p["gender"] = json!(g),
            None => {
                p.as_object_mut().unwrap().remove("gender");
            }
        }
        ids_by_name.push(s.create(&p));
    }
    let [c, a, b] = [&ids_by_name[0], &ids_by_name[1], &ids_by_name[2]].map(String::clone);
    let order = |query: &str| {
        let (st, v) = s.get(query);
        assert_eq!(st, 200, "{query}: {v}");
        ids(&v)
    };
    assert_eq!(
        order("Patient?family=sort&_sort=family"),
        vec![a.clone(), b.clone(), c.clone()]
    );
    assert_eq!(
        order("Patient?family=sort&_sort=-birthdate"),
        vec![c.clone(), b.clone(), a.clone()]
    );
    assert_eq!(
        order("Patient?family=sort&_sort=gender,-family"),
        vec![c.clone(), b.clone(), a.clone()],
        "female < male; the patient without a gender sorts last"
    );
    assert_eq!(
        order("Patient?family=sort&_sort=family&_count=1&_offset=1"),
        vec![b.clone()]
    );
    // Modifiers.
    assert_eq!(
        order("Patient?family=sort&gender:missing=true"),
        vec![a.clone()]
    );
    assert_eq!(
        sorted(order("Patient?family=sort&gender:missing=false")),
        sorted(vec![b.clone(), c.clone()])
    );
    assert_eq!(
        sorted(order("Patient?family=sort&gender:not=male")),
        sorted(vec![a.clone(), c.clone()])
    );
    assert_eq!(order("Patient?family:contains=rtb"), vec![b.clone()]);
    // _total and _tag.
    let (_, v) = s.get("Patient?family=sort&_total=none");
    assert!(v.get("total").is_none(), "{v}");
    let mut tagged = patient("Tagged", "T");
    tagged["meta"] = json!({"tag": [{"system": "urn:test", "code": "vip"}], "profile": ["http://example.org/p"]});
    let t = s.create(&tagged);
    assert_eq!(order("Patient?_tag=urn:test|vip"), vec![t.clone()]);
    assert_eq!(
        order("Patient?_profile=http://example.org/p"),
        vec![t.clone()]
    );
    // A composite: both parts on the same component of a blood pressure.
    let bp = s.create(&json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": format!("Patient/{a}")},
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 150, "unit": "mmHg"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": 85, "unit": "mmHg"}}]}));
    let q = |query: &str| ids(&s.get(query).1);
    assert_eq!(
        q("Observation?component-code-value-quantity=http://loinc.org|8480-6$gt140"),
        vec![bp.clone()]
    );
    assert!(
        q("Observation?component-code-value-quantity=http://loinc.org|8462-4$gt140").is_empty()
    );
    assert_eq!(
        q("Observation?combo-code-value-quantity=8462-4$85"),
        vec![bp.clone()]
    );
    let (st, v) = s.get("Observation?component-code-value-quantity=8480-6");
    assert_eq!(st, 400, "{v}");
}

#[test]
fn summary_and_elements_cut_results_down() {
    let s = MEDVAULT.start();
    let mut p = patient("Summfam", "Sue");
    p["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Sue</div>"});
    p["photo"] = json!([{"contentType": "image/png", "data": "iVBORw0KGgo="}]);
    let id = s.create(&p);
    let subsetted = |r: &serde_json::Value| {
        r["meta"]["tag"]
            .as_array()
            .is_some_and(|t| t.iter().any(|c| c["code"] == "SUBSETTED"))
    };
    let (_, v) = s.get("Patient?family=summfam&_summary=true");
    let r = &v["entry"][0]["resource"];
    assert!(
        r.get("name").is_some() && r.get("photo").is_none() && r.get("text").is_none(),
        "{r}"
    );
    assert!(subsetted(r));
    let (_, v) = s.get("Patient?family=summfam&_elements=photo");
    let r = &v["entry"][0]["resource"];
    assert!(
        r.get("photo").is_some() && r.get("name").is_none() && subsetted(r),
        "{r}"
    );
    let (_, r) = s.get(&format!("Patient/{id}?_summary=data"));
    assert!(
        r.get("text").is_none() && r.get("photo").is_some() && subsetted(&r),
        "{r}"
    );
    let (_, r) = s.get(&format!("Patient/{id}?_elements=birthDate"));
    assert!(
        r.get("birthDate").is_some() && r.get("name").is_none(),
        "{r}"
    );
    let (_, r) = s.get(&format!("Patient/{id}"));
    assert!(
        r.get("photo").is_some() && !subsetted(&r),
        "a plain read is whole"
    );
    let (st, _) = s.get(&format!("Patient/{id}?_summary=maybe"));
    assert_eq!(st, 400);
    let strict = s
        .req(reqwest::Method::GET, "Patient?_elements=nonesuch")
        .header("Prefer", "handling=strict");
    assert_eq!(send(strict).0, 400);
    assert_eq!(
        s.get("Patient?_elements=nonesuch").0,
        200,
        "lenient ignores it"
    );
}

#[test]
fn joins_and_includes_are_bounded() {
    let s = MEDVAULT.start();
    let [p] = s.create_patients([("Boundfam", "B")]);
    // One source naming many (dangling) targets: `_has` and `_include` must not fan out
    // without bound.
    let mut wide = observation(&p, "9999-1", "2026-01-01");
    wide["hasMember"] = (0..5001)
        .map(|i| json!({"reference": format!("Observation/missing-{i}")}))
        .collect();
    s.create(&wide);
    let too_costly = |query: &str| {
        let (st, v) = s.get(query);
        assert_eq!(
            (st, &v["issue"][0]["code"]),
            (400, &json!("too-costly")),
            "{query}: {v}"
        );
    };
    too_costly("Observation?_has:Observation:has-member:code=9999-1");
    too_costly("Observation?code=9999-1&_include=Observation:has-member");
    let many_joins: Vec<String> = (0..7)
        .map(|i| format!("_has:Observation:subject:code=x{i}"))
        .collect();
    too_costly(&format!("Patient?{}", many_joins.join("&")));
    // Within the bounds the same shapes work.
    assert_eq!(
        ids(&s.get("Patient?_has:Observation:subject:code=9999-1").1),
        vec![p]
    );
}

#[test]
fn paging_links_stay_consistent_under_concurrent_writes() {
    let s = MEDVAULT.start();
    let mut all = Vec::new();
    for i in 0..5 {
        all.push(s.create(&patient("Pinfam", &format!("N{i}"))));
    }
    let next_of = |page: &serde_json::Value| link_of(page, "next");
    let (_, page1) = s.get("Patient?family=pinfam&_count=2");
    let mut seen = ids(&page1);
    let link = next_of(&page1).expect("a next page");
    assert!(link.contains("_page="), "{link}");
    // Meanwhile: a new match, and a change that moves a match to the front of the order.
    s.create(&patient("Pinfam", "Late"));
    let moved = all[0].clone();
    let mut changed = s.get(&format!("Patient/{moved}")).1;
    changed["gender"] = json!("other");
    assert_eq!(s.put(&format!("Patient/{moved}"), &changed).0, 200);
    let (_, page2) = s.get(&link);
    seen.extend(ids(&page2));
    let (_, page3) = s.get(&next_of(&page2).expect("a third page"));
    seen.extend(ids(&page3));
    assert!(next_of(&page3).is_none());
    assert_eq!(page3["total"], 5, "the result set as it was");
    assert_eq!(
        sorted(seen),
        sorted(all.clone()),
        "each original match once"
    );
    // The link is the searcher's own: another credential gets 410, as for an expired one.
    let other = s.new_token("admin");
    let (st, v) = send(
        s.anonymous(reqwest::Method::GET, &format!("/fhir/{link}"))
            .bearer_auth(&other),
    );
    assert_eq!(
        (st, &v["resourceType"]),
        (410, &json!("OperationOutcome")),
        "{v}"
    );
    assert_eq!(s.get("Patient?family=pinfam&_page=nonsense").0, 400);
}

/// The `next` link of a searchset Bundle, as a path under `/fhir/`.
fn link_of(page: &serde_json::Value, relation: &str) -> Option<String> {
    page["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .map(|l| {
            l["url"]
                .as_str()
                .unwrap()
                .split("/fhir/")
                .nth(1)
                .unwrap()
                .to_owned()
        })
}

#[test]
fn wide_searches_walk_a_page_at_a_time() {
    let s = MEDVAULT.start();
    // 300 patients share a family name (more than one chunk of candidates), created in one
    // transaction in entry order; two others do not.
    let entries: Vec<_> = (0..300)
        .map(|i| {
            json!({
                "fullUrl": format!("urn:uuid:00000000-0000-4000-8000-{i:012}"),
                "resource": patient("Widefam", &format!("G{i}")),
                "request": {"method": "POST", "url": "Patient"},
            })
        })
        .collect();
    let (st, tx) = s.post(
        "",
        &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
    );
    assert_eq!(st, 200, "{tx}");
    let created: Vec<String> = tx["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let location = e["response"]["location"].as_str().unwrap();
            let after = location.split("Patient/").nth(1).unwrap();
            after.split('/').next().unwrap().to_owned()
        })
        .collect();
    s.create_patients([("Narrow", "A"), ("Narrow", "B")]);
    // Newest created first.
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    let (st, page1) = s.get("Patient?family=widefam&_count=40");
    assert_eq!(st, 200);
    assert_eq!(ids(&page1), newest_first[..40].to_vec());
    assert!(
        page1.get("total").is_none(),
        "more matches than one walk step decides: no total rather than a guess: {}",
        page1["total"]
    );
    // Every page through the `next` links: each match once, in order; `previous` goes back.
    let mut seen = ids(&page1);
    let mut link = link_of(&page1, "next").expect("a second page");
    assert!(link.contains("_page="), "{link}");
    let mut pages = 1;
    // Meanwhile a match not yet reached is updated (it keeps its place) and one is created
    // (newer than the first page: not in this walk).
    let updated = newest_first[200].clone();
    let mut changed = s.get(&format!("Patient/{updated}")).1;
    changed["gender"] = json!("other");
    assert_eq!(s.put(&format!("Patient/{updated}"), &changed).0, 200);
    s.create(&patient("Widefam", "Late"));
    let last = loop {
        let (st, page) = s.get(&link);
        assert_eq!(st, 200, "{page}");
        pages += 1;
        if pages == 3 {
            let back = link_of(&page, "previous").expect("previous");
            assert_eq!(ids(&s.get(&back).1), newest_first[40..80].to_vec());
        }
        seen.extend(ids(&page));
        match link_of(&page, "next") {
            Some(next) => link = next,
            None => break page,
        }
    };
    assert_eq!(seen, newest_first, "each match once, in order");
    // A paging token belongs to its search: with other parameters it answers as an expired one.
    let token = link
        .split("_page=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let (st, _) = s.get(&format!("Patient?family=narrow&_page={token}"));
    assert_eq!(st, 410, "another search's token");
    let (st, _) = s.get(&format!(
        "Patient?family=widefam&_summary=count&_page={token}"
    ));
    assert_eq!(st, 410);
    assert_eq!(pages, 8);
    assert_eq!(
        last["total"], 300,
        "the walk reached the end: an exact total"
    );

    // Asked for, the total is counted (by walking every match); none is given when refused.
    let (_, accurate) = s.get("Patient?family=widefam&_count=5&_total=accurate");
    assert_eq!(
        (accurate["total"].as_u64(), ids(&accurate).len()),
        (Some(301), 5)
    );
    let (_, count) = s.get("Patient?family=widefam&_summary=count");
    assert_eq!(count["total"], 301);
    let (_, none) = s.get("Patient?family=narrow&_total=none");
    assert!(none.get("total").is_none());
    assert_eq!(ids(&none).len(), 2);
    // A client's own offset still works (walking past the skipped matches).
    let (_, offset) = s.get("Patient?family=widefam&_count=3&_offset=10");
    assert_eq!(ids(&offset)[..], newest_first[9..12], "after the late one");
    // The whole type, walked the same way.
    let (_, everyone) = s.get("Patient?_count=2");
    assert_eq!(ids(&everyone).len(), 2);
    assert!(link_of(&everyone, "next").is_some());

    // A clinician on one patient's care team: every other match is hidden, and the total
    // counts only what they may see.
    let dr = s.person("widedoc", "clinician");
    let mine = newest_first[150].clone();
    s.care_team(dr.practitioner.as_deref().unwrap(), &mine);
    let (st, theirs) = s.get_as("/fhir/Patient?family=widefam", &dr.session, None);
    assert_eq!(st, 200, "{theirs}");
    assert_eq!(ids(&theirs), vec![mine]);
    assert_eq!(theirs["total"], 1);
    assert!(link_of(&theirs, "next").is_none());
}

#[test]
fn a_sorted_result_set_shows_no_record_relabelled_or_deleted_since() {
    let s = MEDVAULT.start();
    let [p] = s.create_patients([("Sortlabel", "P")]);
    let dr = s.person("sortdoc", "clinician");
    s.care_team(dr.practitioner.as_deref().unwrap(), &p);
    let obs: Vec<String> = (0..4)
        .map(|i| s.create(&observation(&p, "9999-9", &format!("2024-01-0{}", i + 1))))
        .collect();
    let mut by_id = obs.clone();
    by_id.sort();
    let first = format!("/fhir/Observation?subject=Patient/{p}&_sort=_id&_count=1");
    let (st, page1) = s.get_as(&first, &dr.session, None);
    assert_eq!((st, ids(&page1)), (200, vec![by_id[0].clone()]), "{page1}");
    let next = link_of(&page1, "next").expect("a pinned next page");
    assert!(next.contains("_page="), "{next}");
    // Meanwhile the second is relabelled restricted and the third deleted.
    let (_, mut second) = s.get(&format!("Observation/{}", by_id[1]));
    second = medvault_testkit::fhir::labelled(second, "R");
    assert_eq!(s.put(&format!("Observation/{}", by_id[1]), &second).0, 200);
    assert_eq!(s.delete(&format!("Observation/{}", by_id[2])).0, 200);
    let page = |path: &str| {
        let wider = path.replace("_count=1", "_count=5");
        let (st, v) = s.get_as(&format!("/fhir/{wider}"), &dr.session, None);
        assert_eq!(st, 200, "{v}");
        ids(&v)
    };
    assert_eq!(
        page(&next),
        vec![by_id[3].clone()],
        "neither the relabelled nor the deleted one, though pinned"
    );
}

#[test]
fn a_search_of_a_thousand_values_pages_through_its_links() {
    let s = MEDVAULT.start();
    for i in 0..3 {
        s.create(&patient("Thousand", &format!("T{i}")));
    }
    let values: Vec<String> = std::iter::once("thousand".to_owned())
        .chain((1..1000).map(|i| format!("x{i}")))
        .collect();
    let (st, page1) = s.get(&format!("Patient?family={}&_count=2", values.join(",")));
    assert_eq!((st, ids(&page1).len()), (200, 2), "{page1}");
    let next = link_of(&page1, "next").expect("next");
    let (st, page2) = s.get(&next);
    assert_eq!(
        (st, ids(&page2).len()),
        (200, 1),
        "paging's parameters do not count"
    );
}
