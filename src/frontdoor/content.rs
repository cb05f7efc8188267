//! `$content`: streams the media bytes from the EHR to the client with gateway credentials only; an
//! upstream error is read (bounded) and translated by the mapping.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use http::{HeaderValue, Response, header};
use http_body_util::StreamBody;
use serde_json::Value;

use super::{OrgCtx, category_for};
use crate::body::{self, Body};
use crate::error::GatewayError;
use crate::mapping::engine::{self, Run, UpstreamResponse};
use crate::request::GatewayResponse;

pub(super) async fn content(
    o: &OrgCtx,
    id: &str,
    params: &[(String, String)],
) -> Result<GatewayResponse, GatewayError> {
    let category = category_for(o, id)?;
    let run = Run::content(&o.mapping, category, id, params, o.context())?;
    let upstream = o.client.stream(&run).await?;
    if upstream.status != 200 {
        // Error bodies are small; read a bounded prefix to translate them.
        let mut collected = Vec::new();
        let mut stream = upstream.body;
        while let Some(Ok(chunk)) = stream.next().await {
            collected.extend_from_slice(&chunk);
            if collected.len() > 64 * 1024 {
                break;
            }
        }
        let vars: BTreeMap<String, Value> = [("gateway_id".to_string(), Value::String(id.to_string()))].into();
        let response = UpstreamResponse { status: upstream.status, headers: upstream.headers, body: collected.into() };
        return Err(engine::translate_error(&o.mapping, &response, &vars));
    }
    let content_type = upstream.headers.get(header::CONTENT_TYPE).cloned();
    let length = upstream.headers.get(header::CONTENT_LENGTH).cloned();
    let frames = upstream.body.map(|chunk| chunk.map(hyper::body::Frame::data));
    let mut response: Response<Body> = Response::new(body::boxed(StreamBody::new(frames)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type.unwrap_or(HeaderValue::from_static("application/octet-stream")));
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, length);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    Ok(response)
}
