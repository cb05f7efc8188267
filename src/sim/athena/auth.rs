//! The OAuth token endpoint (HTTP Basic client credentials, required scope, new tokens limited per rolling minute)
//! and the bearer check in front of the API.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use rand::Rng as _;
use serde_json::json;
use tokio::time::Instant;

use super::State;
use super::query::Query;
use super::responses::{Refusal, athena_error, gateway_not_registered};
use crate::sim::support::{SimResponse, basic_credentials, empty_response, has_media_type, json_response};

/// Token endpoint path on the API host.
pub const TOKEN_PATH: &str = "/oauth2/v1/token";
/// The scope that grants the proprietary (MDP) API.
pub const MDP_SCOPE: &str = "athena/service/Athenanet.MDP.*";

const MAX_TOKEN_BODY: usize = 64 * 1024;
const RATE_WINDOW: Duration = Duration::from_secs(60);

pub(super) struct TokenInfo {
    pub(super) expiry: Instant,
    /// Whether the token carries the proprietary API scope.
    mdp: bool,
}

impl State {
    pub(super) async fn token_endpoint(&self, req: Request<Incoming>, method: &Method, path: &str) -> SimResponse {
        if path != TOKEN_PATH {
            return gateway_not_registered();
        }
        if method != Method::POST {
            let mut response = empty_response(StatusCode::METHOD_NOT_ALLOWED);
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        // Client authentication is HTTP Basic (the JWT-assertion alternative is not simulated).
        let Some((client_id, client_secret)) = basic_credentials(req.headers()) else {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Client authentication failed.");
        };
        if !has_media_type(req.headers(), &["application/x-www-form-urlencoded"]) {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "The body must be form-urlencoded.");
        }
        let body = match Limited::new(req.into_body(), MAX_TOKEN_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Unreadable body."),
        };
        let form = Query::parse(&String::from_utf8_lossy(&body));
        match form.get("grant_type") {
            None | Some("") => {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type is required.");
            }
            Some("client_credentials") => {}
            Some(_) => {
                return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "Unsupported grant type.");
            }
        }
        if client_id != self.client_id || client_secret != self.client_secret {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Client authentication failed.");
        }
        let scope = form.get("scope").unwrap_or("").trim().to_owned();
        let scopes: Vec<&str> = scope.split_whitespace().collect();
        if scopes.is_empty() || !scopes.iter().all(|s| scope_ok(s)) {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", "The requested scope is invalid.");
        }
        let mdp = scopes.contains(&MDP_SCOPE);

        let token: String = rand::rng().sample_iter(&rand::distr::Alphanumeric).take(28).map(char::from).collect();
        let ttl = {
            let mut data = self.data();
            let now = Instant::now();
            while data.issued.front().is_some_and(|at| now.saturating_duration_since(*at) >= RATE_WINDOW) {
                data.issued.pop_front();
            }
            if data.issued.len() >= data.token_limit as usize {
                data.stats.tokens_refused_rate_limited += 1;
                // New tokens stay refused until the oldest issue in the window leaves it.
                let wait = data
                    .issued
                    .front()
                    .map(|at| RATE_WINDOW.saturating_sub(now.saturating_duration_since(*at)))
                    .unwrap_or(RATE_WINDOW);
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                drop(data);
                let mut response = athena_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many requests.",
                    Some("The limit of new access tokens per minute has been reached."),
                );
                if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                return response;
            }
            data.issued.push_back(now);
            let ttl = data.token_ttl;
            // A huge TTL must not overflow Instant; cap it at roughly a century.
            let expiry = now
                .checked_add(ttl)
                .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
                .unwrap_or(now);
            data.tokens.retain(|_, info| info.expiry > now);
            data.tokens.insert(token.clone(), TokenInfo { expiry, mdp });
            ttl
        };
        // expires_in is a JSON string, as in athena's published token examples (athena.md §1).
        let body = json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": ttl.as_secs().to_string(),
            "scope": scope,
        });
        let mut response = json_response(StatusCode::OK, &body);
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    /// Checks the bearer; `Err` is the 401 to answer.
    pub(super) fn check_bearer(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(Box::new(athena_error(StatusCode::UNAUTHORIZED, "Developer Inactive", None)));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
            .map(|(_, token)| token.trim());
        let Some(token) = token else {
            return Err(Box::new(athena_error(StatusCode::UNAUTHORIZED, "Developer Inactive", None)));
        };
        let data = self.data();
        match data.tokens.get(token) {
            Some(info) if Instant::now() < info.expiry => {
                if info.mdp {
                    Ok(())
                } else {
                    Err(Box::new(athena_error(StatusCode::UNAUTHORIZED, "Incorrect permissions.", Some("Bad auth."))))
                }
            }
            _ => Err(Box::new(athena_error(
                StatusCode::UNAUTHORIZED,
                "Invalid or expired access token.",
                Some("The access token is invalid or has expired."),
            ))),
        }
    }
}

fn scope_ok(scope: &str) -> bool {
    if scope == MDP_SCOPE {
        return true;
    }
    // FHIR system scopes such as `system/Patient.read` or `system/Media.read`.
    let Some(rest) = scope.strip_prefix("system/") else {
        return false;
    };
    let Some((resource, access)) = rest.split_once('.') else {
        return false;
    };
    !resource.is_empty()
        && (resource == "*" || resource.chars().all(|c| c.is_ascii_alphabetic()))
        && matches!(access, "read" | "write" | "*")
}

pub(super) fn oauth_error(status: StatusCode, error: &str, description: &str) -> SimResponse {
    let mut response = json_response(status, &json!({ "error": error, "error_description": description }));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
