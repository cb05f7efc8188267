//! The `_page` token: where a search continues, handed to the client as opaque text.

use base64::Engine as _;
use serde_json::{Value, json};

/// Where a `_page` token continues a search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageToken {
    /// At an upstream link.
    Link { category: String, link: String },
    /// The same search again (its FHIR parameters, `_count` included) at an offset.
    Offset { category: String, params: Vec<(String, String)>, offset: u64 },
}

/// Opaque paging token (the client sends it back as `_page`).
pub fn encode_page_token(token: &PageToken) -> String {
    let v = match token {
        PageToken::Link { category, link } => json!({ "c": category, "l": link }),
        PageToken::Offset { category, params, offset } => json!({ "c": category, "p": params, "o": offset }),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

pub fn decode_page_token(token: &str) -> Option<PageToken> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let category = v.get("c")?.as_str()?.to_string();
    if let Some(link) = v.get("l") {
        return Some(PageToken::Link { category, link: link.as_str()?.to_string() });
    }
    let params = serde_json::from_value::<Vec<(String, String)>>(v.get("p")?.clone()).ok()?;
    Some(PageToken::Offset { category, params, offset: v.get("o")?.as_u64()? })
}
