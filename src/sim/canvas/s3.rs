//! The stand-in for the S3 bucket Canvas's content URLs redirect to: presigned URLs issued by the simulator and
//! checked by its S3 host, with S3's XML errors.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::State;
use super::faults::Host;
use crate::sim::support::{HandlerResult, SimResponse};

/// The bucket name shows up in presigned URLs, as it does for real Canvas media.
const S3_BUCKET: &str = "canvas-client-media";
/// Presigned URLs live one hour, like the SDK's `image_url`.
const PRESIGN_TTL: Duration = Duration::from_secs(3600);

/// Server-side record of issued presigned URLs: the "signature" is a random token, checked by the S3 host.
#[derive(Default)]
pub(super) struct Presigner {
    by_signature: HashMap<String, (String, Instant)>,
    prune_at: usize,
}

impl Presigner {
    pub(super) fn issue(&mut self, s3_base: &str, s3_key: &str) -> String {
        let now = Instant::now();
        // Prune expired signatures only once the table has doubled, keeping issue() amortised O(1).
        if self.by_signature.len() >= self.prune_at {
            self.by_signature.retain(|_, (_, expires)| *expires > now);
            self.prune_at = (self.by_signature.len() * 2).max(1024);
        }
        let signature = hex::encode(rand::random::<[u8; 32]>());
        let expires = now.checked_add(PRESIGN_TTL).unwrap_or(now);
        self.by_signature.insert(signature.clone(), (s3_key.to_owned(), expires));
        format!(
            "{s3_base}/{S3_BUCKET}/{s3_key}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires={}\
             &X-Amz-SignedHeaders=host&X-Amz-Signature={signature}",
            PRESIGN_TTL.as_secs()
        )
    }

    fn check(&self, signature: &str, s3_key: &str) -> Result<(), &'static str> {
        match self.by_signature.get(signature) {
            Some((key, expires)) if key == s3_key => {
                if Instant::now() < *expires {
                    Ok(())
                } else {
                    Err("Request has expired")
                }
            }
            _ => Err("Access Denied"),
        }
    }
}

impl State {
    pub(super) async fn handle_s3(&self, req: Request<Incoming>) -> HandlerResult {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let response = match self.apply_fault(Host::S3, &method, &path).await? {
            Some(response) => response,
            None => self.s3_get(&req, &method, &path),
        };
        // The object key is part of a presigned URL; keep it out of logs like the URL itself.
        tracing::debug!(host = "canvas-s3", %method, status = response.status().as_u16(), "sim");
        Ok(response)
    }

    fn s3_get(&self, req: &Request<Incoming>, method: &Method, path: &str) -> SimResponse {
        if method != Method::GET && method != Method::HEAD {
            return s3_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "The specified method is not allowed against this resource.",
            );
        }
        // A private bucket answers AccessDenied for anything it will not serve, including unknown keys.
        let Some(key) =
            path.strip_prefix('/').and_then(|p| p.strip_prefix(S3_BUCKET)).and_then(|p| p.strip_prefix('/'))
        else {
            return s3_error(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied");
        };
        let signature = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .find(|(name, _)| name == "X-Amz-Signature")
            .map(|(_, value)| value.into_owned());
        let Some(signature) = signature else {
            return s3_error(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied");
        };
        // Like real S3: a presigned URL plus an Authorization header is rejected. It also flags a client that
        // forwards the Canvas bearer token to S3 (the redirect must not carry it).
        if req.headers().contains_key(header::AUTHORIZATION) {
            return s3_error(
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query \
                 string parameter or the Authorization header should be specified",
            );
        }
        let data = self.data();
        if let Err(message) = data.presigner.check(&signature, key) {
            return s3_error(StatusCode::FORBIDDEN, "AccessDenied", message);
        }
        let Some(rec) = data.s3_keys.get(key).and_then(|id| data.media.get(id)) else {
            return s3_error(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied");
        };
        let mut response = Response::new(Full::new(rec.data.clone()));
        if let Ok(content_type) = HeaderValue::from_str(&rec.content_type) {
            response.headers_mut().insert(header::CONTENT_TYPE, content_type);
        }
        response
    }
}

pub(super) fn s3_error(status: StatusCode, code: &str, message: &str) -> SimResponse {
    let request_id = hex::encode(rand::random::<[u8; 8]>()).to_uppercase();
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
         <RequestId>{request_id}</RequestId><HostId>canvas-sim</HostId></Error>"
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    response
}
