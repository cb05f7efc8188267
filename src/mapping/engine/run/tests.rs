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
