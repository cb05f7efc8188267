//! A run's media: the upload reaches the EHR spliced in whole, is let go once the write is answered,
//! and an answer's media live only while something taken from the answer refers to them.

use std::path::Path;

use base64::Engine as _;
use bytes::Bytes;
use http::HeaderMap;
use serde_json::{Value, json};

use super::Run;
use crate::json::{self, Limits, Payloads};
use crate::mapping::engine::{Context, Outcome, UpstreamResponse};
use crate::mapping::{Mapping, compile_file};

const MAPPING: &str = r#"
ehr = "canvas"
display_name = "Test EHR"
default_category = "img"

[auth]
flow = "client_credentials"
client_auth = "form"

[categories.img]
description = "an image slot"
id = "t.{media_id}"

[categories.img.resource]
bind = { media_id = "$.id" }

[categories.img.resource.template]
resourceType = "Media"
id = "{gateway_id}"
status = "completed"
content = { contentType = "$.image | base64_media_type", size = "$.image | base64_size", url = "{content_url}" }

[categories.img.create]
[[categories.img.create.steps]]
method = "POST"
path = "/images"
expect = [201]
bind = { media_id = "$.id" }
body = { image = "$.content.data" }

[[categories.img.create.steps]]
method = "GET"
path = "/images/{media_id}"
expect = [200]
result = "resource"

[categories.img.search]
params = { patient = "patient" }
count = { default = 10, max = 10 }
entries = "$.items[*]"

[[categories.img.search.steps]]
method = "GET"
path = "/images"
expect = [200]
result = "bundle"

[categories.img.search.each]
drop_on = [404]

[categories.img.search.each.step]
method = "GET"
path = "/images/{media_id}"
expect = [200]
"#;

fn mapping() -> Mapping {
    match compile_file("test", Path::new("test.toml"), MAPPING) {
        Ok((m, _)) => m,
        Err(d) => panic!("{d:?}"),
    }
}

fn jpeg_base64(len: usize) -> String {
    let mut bytes = vec![0xff, 0xd8, 0xff, 0xe0];
    bytes.resize(len, 7);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn answer(status: u16, body: Value) -> UpstreamResponse {
    UpstreamResponse { status, headers: HeaderMap::new(), body: Bytes::from(body.to_string()) }
}

#[test]
fn the_upload_is_sent_whole_then_let_go_and_the_read_back_media_do_not_outlive_the_answer() {
    let mapping = mapping();
    let category = mapping.category("img").unwrap();
    let data = jpeg_base64(200_000);
    let body = Bytes::from(
        json!({"resourceType": "Media", "status": "completed", "content": {"contentType": "image/jpeg", "data": data}})
            .to_string(),
    );
    let mut payloads = Payloads::default();
    let resource = json::parse(&body, &Limits::CLIENT, &mut payloads).unwrap();
    let ctx = Context { payloads, ..Context::default() };
    let mut run = Run::create(&mapping, category, resource, ctx).unwrap();

    let post = run.next_request().unwrap();
    let sent = post.body.unwrap().to_bytes();
    assert_eq!(serde_json::from_slice::<Value>(&sent).unwrap(), json!({"image": data}), "spliced in whole");
    assert_eq!(run.payloads().held(), 1);

    assert!(run.on_response(&answer(201, json!({"id": "7"}))).unwrap().is_none());
    assert_eq!(run.payloads().held(), 0, "the upload is let go once the write is answered");

    let get = run.next_request().unwrap();
    assert_eq!(get.path, "/images/7");
    let stored = jpeg_base64(150_000);
    let Some(Outcome::Resource(media)) = run.on_response(&answer(200, json!({"id": "7", "image": stored}))).unwrap()
    else {
        panic!("a resource")
    };
    assert_eq!(media["content"]["size"], 150_000, "facts come from the answer's payload");
    assert_eq!(media["content"]["contentType"], "image/jpeg");
    assert_eq!(run.payloads().held(), 0, "nothing in the outcome refers to the image");
}

#[test]
fn a_search_that_reads_an_image_per_entry_holds_one_at_a_time() {
    let mapping = mapping();
    let category = mapping.category("img").unwrap();
    let mut run =
        Run::search(&mapping, category, &[("patient".into(), "1".into())], None, None, Context::default()).unwrap();
    run.next_request().unwrap();
    let list = json!({"items": [{"id": "1"}, {"id": "2"}, {"id": "3"}]});
    assert!(run.on_response(&answer(200, list)).unwrap().is_none());
    for id in ["1", "2", "3"] {
        assert_eq!(run.next_request().unwrap().path, format!("/images/{id}"));
        let outcome = run.on_response(&answer(200, json!({"id": id, "image": jpeg_base64(100_000)}))).unwrap();
        assert_eq!(run.payloads().held(), 0, "entry {id}'s image was let go");
        if id == "3" {
            let Some(Outcome::Page { entries, .. }) = outcome else { panic!("a page") };
            assert_eq!(entries.len(), 3);
            assert!(entries.iter().all(|e| e["content"]["size"] == 100_000));
        }
    }
}

/// A document store whose update appends to a note, and whose list pages by offset with a request per entry.
const NOTES: &str = r#"
ehr = "canvas"
display_name = "Test EHR"
default_category = "doc"

[auth]
flow = "client_credentials"
client_auth = "form"

[categories.doc]
description = "a document with a note"
id = "d.{doc_id}"

[categories.doc.resource]
bind = { doc_id = "$.id" }

[categories.doc.resource.template]
resourceType = "Media"
id = "{gateway_id}"
status = "completed"
note = [{ text = "$.note" }]
extension = [{ url = "seen", valueDateTime = "$.seen" }, { url = "kind", valueCode = "$.kind" }]

[categories.doc.read]
[[categories.doc.read.steps]]
method = "GET"
path = "/docs/{doc_id}"
expect = [200]
result = "resource"

[categories.doc.update]
changeable = ["Media.note"]
ignore_changes = ["Media.extension('seen')"]
append_only = [{ path = "$.note[0].text", bind = "added", expression = "Media.note", message = "the note only grows" }]

[[categories.doc.update.steps]]
method = "PUT"
path = "/docs/{doc_id}"
when = "added"
body = { append = "{added}" }
expect = [200]
idempotent = false

[[categories.doc.update.steps]]
method = "GET"
path = "/docs/{doc_id}"
expect = [200]
result = "resource"

[categories.doc.search]
params = { owner = "owner" }
count = { default = 2, max = 10 }
paging = "offset"
entries = "$.items[*]"
total = "$.total"

[[categories.doc.search.steps]]
method = "GET"
path = "/docs"
query = { limit = "{_count}", offset = "{_offset}" }
expect = [200]
result = "bundle"

[categories.doc.search.each]
drop_on = [404]

[categories.doc.search.each.step]
method = "GET"
path = "/docs/{doc_id}"
expect = [200]

[[errors]]
status = "404"
interactions = ["update"]
gateway_status = 409
code = "conflict"
message = "gone while updating"

[[errors]]
status = "404"
gateway_status = 404
code = "not-found"
message = "no such document"
"#;

fn notes() -> Mapping {
    match compile_file("notes", Path::new("notes.toml"), NOTES) {
        Ok((m, _)) => m,
        Err(d) => panic!("{d:?}"),
    }
}

fn doc(note: &str, seen: &str) -> Value {
    json!({"resourceType": "Media", "id": "d.7", "status": "completed", "note": [{"text": note}],
        "extension": [{"url": "seen", "valueDateTime": seen}, {"url": "kind", "valueCode": "scan"}]})
}

#[test]
fn an_append_only_note_sends_only_what_was_added_and_never_as_a_resendable_request() {
    let mapping = notes();
    let category = mapping.category("doc").unwrap();
    let current = doc("first", "t2");
    // A stale `seen` (the EHR's own) is no change; the note grows by "second".
    let run = Run::update(&mapping, category, "d.7", doc("first\nsecond", "t1"), &current, Context::default()).unwrap();
    let put = run.next_request().unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&put.body.unwrap().to_bytes()).unwrap(), json!({"append": "second"}));
    assert!(!put.idempotent, "an appending request is never resent");
    // Nothing added: only the read-back runs.
    let run = Run::update(&mapping, category, "d.7", doc("first ", "t1"), &current, Context::default()).unwrap();
    assert_eq!(run.next_request().unwrap().method, http::Method::GET);
    // A replaced note, and a change of what the EHR keeps, are refused by name.
    let e = Run::update(&mapping, category, "d.7", doc("other", "t2"), &current, Context::default()).err().unwrap();
    assert_eq!((e.status.as_u16(), e.issues[0].message.as_str()), (422, "the note only grows"));
    let mut kind = doc("first", "t2");
    kind["extension"][1]["valueCode"] = json!("fax");
    let e = Run::update(&mapping, category, "d.7", kind, &current, Context::default()).err().unwrap();
    assert_eq!(e.issues[0].expression, ["Media.extension('kind')"]);
}

#[test]
fn an_appending_step_marked_idempotent_does_not_load() {
    let broken = NOTES.replacen("idempotent = false", "idempotent = true", 1);
    let d = compile_file("notes", Path::new("notes.toml"), &broken).unwrap_err();
    assert!(d.iter().any(|d| d.message.contains("resending it would append twice")), "{d:?}");
    let broken = NOTES.replacen("interactions = [\"update\"]", "interactions = [\"updates\"]", 1);
    let d = compile_file("notes", Path::new("notes.toml"), &broken).unwrap_err();
    assert!(d.iter().any(|d| d.message.contains("did you mean `update`")), "{d:?}");
}

#[test]
fn error_rules_limited_to_interactions_apply_only_there() {
    let mapping = notes();
    let category = mapping.category("doc").unwrap();
    let mut read = Run::read(&mapping, category, "d.7", Context::default()).unwrap();
    read.next_request().unwrap();
    assert_eq!(read.on_response(&answer(404, json!({}))).err().unwrap().status.as_u16(), 404);
    let current = doc("first", "t2");
    let mut update =
        Run::update(&mapping, category, "d.7", doc("first more", "t2"), &current, Context::default()).unwrap();
    update.next_request().unwrap();
    assert_eq!(update.on_response(&answer(404, json!({}))).err().unwrap().status.as_u16(), 409);
}

/// Drives a search page against a store of `ids` (in order) where only `with_file` answer their entry.
fn search_page(count: &str, offset: Option<u64>, ids: &[&str], with_file: &[&str]) -> (Vec<String>, Option<String>) {
    let mapping = notes();
    let category = mapping.category("doc").unwrap();
    let params = [("owner".to_string(), "o".to_string())];
    let mut run = Run::search(&mapping, category, &params, Some(count), offset, Context::default()).unwrap();
    loop {
        let request = run.next_request().unwrap();
        let response = if request.path == "/docs" {
            let q: std::collections::BTreeMap<_, _> = request.query.iter().cloned().collect();
            let (limit, offset): (usize, usize) = (q["limit"].parse().unwrap(), q["offset"].parse().unwrap());
            let items: Vec<Value> = ids.iter().skip(offset).take(limit).map(|id| json!({"id": id})).collect();
            answer(200, json!({"items": items, "total": ids.len()}))
        } else {
            let id = request.path.trim_start_matches("/docs/");
            if with_file.contains(&id) { answer(200, json!({"id": id, "note": "n"})) } else { answer(404, json!({})) }
        };
        if let Some(Outcome::Page { entries, next, .. }) = run.on_response(&response).unwrap() {
            let ids = entries.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
            return (ids, next.map(|n| n.to_string()));
        }
    }
}

#[test]
fn a_filtered_offset_page_reads_on_until_it_holds_count_entries_and_links_on_only_when_more_exist() {
    let ids = ["1", "2", "3", "4", "5", "6"];
    // 2 and 3 have nothing: the first page reads on to 4, and looks ahead to 5 to know more exist.
    let with = ["1", "4", "5"];
    assert_eq!(search_page("2", None, &ids, &with), (vec!["d.1".into(), "d.4".into()], Some("_offset=4".into())));
    assert_eq!(search_page("2", Some(4), &ids, &with), (vec!["d.5".into()], None));
    // Exactly `_count` left: no next link to an empty page.
    assert_eq!(search_page("3", None, &ids, &with), (vec!["d.1".into(), "d.4".into(), "d.5".into()], None));
    assert_eq!(search_page("2", None, &ids, &[]), (vec![], None));
}
