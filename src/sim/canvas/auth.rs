//! The instance host's OAuth token endpoint (client credentials, as strict as Canvas's oauthlib) and the bearer
//! check every fumage request passes.

use std::collections::HashMap;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use rand::Rng as _;
use serde_json::json;
use tokio::time::Instant;

use super::State;
use super::faults::Host;
use super::responses::html_response;
use crate::sim::support::{
    HandlerResult, SimResponse, basic_credentials, empty_response, has_media_type, json_response,
};

/// Token endpoint path on the instance host. The trailing slash is required, as on Canvas.
pub const TOKEN_PATH: &str = "/auth/token/";

const MAX_TOKEN_BODY: usize = 64 * 1024;
const TOKEN_SCOPE: &str = "system/*.read system/*.write";

impl State {
    pub(super) async fn handle_instance(&self, req: Request<Incoming>) -> HandlerResult {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        if method == Method::POST && path == TOKEN_PATH {
            self.data().stats.token_requests += 1;
        }
        let response = match self.apply_fault(Host::Instance, &method, &path).await? {
            Some(response) => response,
            None => self.token_endpoint(req, &method, &path).await,
        };
        tracing::debug!(host = "canvas-instance", %method, path, status = response.status().as_u16(), "sim");
        Ok(response)
    }

    async fn token_endpoint(&self, req: Request<Incoming>, method: &Method, path: &str) -> SimResponse {
        if path != TOKEN_PATH {
            // Canvas is a Django app: `/auth/token` without the slash is simply not a route.
            return html_response(
                StatusCode::NOT_FOUND,
                "<h1>Not Found</h1><p>The requested resource was not found on this server.</p>",
            );
        }
        if method != Method::POST {
            let mut response = empty_response(StatusCode::METHOD_NOT_ALLOWED);
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
            return response;
        }
        let basic = basic_credentials(req.headers());
        if !has_media_type(req.headers(), &["application/x-www-form-urlencoded"]) {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
        }
        let body = match Limited::new(req.into_body(), MAX_TOKEN_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request"),
        };
        let mut form: HashMap<String, String> = HashMap::new();
        for (key, value) in form_urlencoded::parse(&body) {
            // oauthlib rejects repeated parameters outright.
            if form.insert(key.into_owned(), value.into_owned()).is_some() {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
            }
        }
        match form.get("grant_type").map(String::as_str) {
            None | Some("") => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request"),
            Some("client_credentials") => {}
            Some(_) => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
        }
        // RFC 6749 §2.3.1: HTTP Basic client authentication takes precedence over body parameters.
        let (client_id, client_secret) = match basic {
            Some(creds) => creds,
            None => (
                form.get("client_id").cloned().unwrap_or_default(),
                form.get("client_secret").cloned().unwrap_or_default(),
            ),
        };
        if client_id != self.client_id || client_secret != self.client_secret {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
        }

        let token: String = rand::rng().sample_iter(&rand::distr::Alphanumeric).take(30).map(char::from).collect();
        let ttl = {
            let mut data = self.data();
            let now = Instant::now();
            let ttl = data.token_ttl;
            // A huge TTL must not overflow Instant; cap it at roughly a century.
            let expiry = now
                .checked_add(ttl)
                .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
                .unwrap_or(now);
            data.tokens.retain(|_, exp| *exp > now);
            data.tokens.insert(token.clone(), expiry);
            ttl
        };
        let body = json!({
            "access_token": token,
            "expires_in": ttl.as_secs(),
            "token_type": "Bearer",
            "scope": TOKEN_SCOPE,
        });
        let mut response = json_response(StatusCode::OK, &body);
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        response
    }

    pub(super) fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some((scheme, token)) = value.split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return false;
        }
        self.data().tokens.get(token).is_some_and(|expiry| Instant::now() < *expiry)
    }
}

pub(super) fn oauth_error(status: StatusCode, error: &str) -> SimResponse {
    let mut response = json_response(status, &json!({ "error": error }));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
