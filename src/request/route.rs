//! Request classification: which front-door interaction (or admin endpoint) a method and path name.
//! It lives beside the request types because every layer that looks at a request needs it — the trace
//! span, the recorder and the front door — and none of them may depend on another for it.

use http::Method;

const FHIR_PREFIX: &str = "/fhir/4";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Healthz,
    /// `GET /admin/mappings`: the active mapping set and the last reload.
    AdminMappings,
    /// `POST /admin/mappings/reload`: reload the mapping folder now.
    AdminReload,
    Metadata {
        org: String,
    },
    Create {
        org: String,
    },
    Search {
        org: String,
    },
    SearchPost {
        org: String,
    },
    HistoryType {
        org: String,
    },
    Read {
        org: String,
        id: String,
    },
    Update {
        org: String,
        id: String,
    },
    Patch {
        org: String,
        id: String,
    },
    Delete {
        org: String,
        id: String,
    },
    HistoryInstance {
        org: String,
        id: String,
    },
    VRead {
        org: String,
        id: String,
        version: String,
    },
    Content {
        org: String,
        id: String,
    },
    MethodNotAllowed {
        org: Option<String>,
        allowed: &'static str,
    },
    NotFound {
        org: Option<String>,
    },
}

impl Route {
    pub fn classify(method: &Method, path: &str) -> Route {
        if path == "/healthz" {
            return if method == Method::GET {
                Route::Healthz
            } else {
                Route::MethodNotAllowed { org: None, allowed: "GET" }
            };
        }
        match (path, method) {
            ("/admin/mappings", &Method::GET) => return Route::AdminMappings,
            ("/admin/mappings/reload", &Method::POST) => return Route::AdminReload,
            ("/admin/mappings", _) => return Route::MethodNotAllowed { org: None, allowed: "GET" },
            ("/admin/mappings/reload", _) => return Route::MethodNotAllowed { org: None, allowed: "POST" },
            _ => {}
        }
        let Some(rest) = path.strip_prefix("/organizations/") else { return Route::NotFound { org: None } };
        let (org, rest) = rest.split_once('/').unwrap_or((rest, ""));
        if org.is_empty() {
            return Route::NotFound { org: None };
        }
        let org = org.to_string();
        let Some(rest) = format!("/{rest}").strip_prefix(FHIR_PREFIX).map(str::to_string) else {
            return Route::NotFound { org: Some(org) };
        };
        let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let m = method.clone();
        let not_allowed = |allowed| Route::MethodNotAllowed { org: Some(org.clone()), allowed };
        match segments.as_slice() {
            ["metadata"] => {
                if m == Method::GET {
                    Route::Metadata { org }
                } else {
                    not_allowed("GET")
                }
            }
            ["Media"] => match m {
                Method::GET => Route::Search { org },
                Method::POST => Route::Create { org },
                _ => not_allowed("GET, POST"),
            },
            ["Media", "_search"] => {
                if m == Method::POST {
                    Route::SearchPost { org }
                } else {
                    not_allowed("POST")
                }
            }
            ["Media", "_history"] => {
                if m == Method::GET {
                    Route::HistoryType { org }
                } else {
                    not_allowed("GET")
                }
            }
            ["Media", id] => {
                let id = id.to_string();
                match m {
                    Method::GET => Route::Read { org, id },
                    Method::PUT => Route::Update { org, id },
                    Method::PATCH => Route::Patch { org, id },
                    Method::DELETE => Route::Delete { org, id },
                    _ => not_allowed("GET, PUT, PATCH, DELETE"),
                }
            }
            ["Media", id, "_history"] => {
                if m == Method::GET {
                    Route::HistoryInstance { org, id: id.to_string() }
                } else {
                    not_allowed("GET")
                }
            }
            ["Media", id, "_history", version] => {
                if m == Method::GET {
                    Route::VRead { org, id: id.to_string(), version: version.to_string() }
                } else {
                    not_allowed("GET")
                }
            }
            ["Media", id, "$content"] => {
                if m == Method::GET {
                    Route::Content { org, id: id.to_string() }
                } else {
                    not_allowed("GET")
                }
            }
            _ => Route::NotFound { org: Some(org) },
        }
    }

    pub fn organization(&self) -> Option<&str> {
        match self {
            Route::Healthz | Route::AdminMappings | Route::AdminReload => None,
            Route::MethodNotAllowed { org, .. } | Route::NotFound { org } => org.as_deref(),
            Route::Metadata { org }
            | Route::Create { org }
            | Route::Search { org }
            | Route::SearchPost { org }
            | Route::HistoryType { org }
            | Route::Read { org, .. }
            | Route::Update { org, .. }
            | Route::Patch { org, .. }
            | Route::Delete { org, .. }
            | Route::HistoryInstance { org, .. }
            | Route::VRead { org, .. }
            | Route::Content { org, .. } => Some(org),
        }
    }

    /// The interaction name used in logs.
    pub fn interaction(&self) -> &'static str {
        match self {
            Route::Healthz => "healthz",
            Route::AdminMappings => "admin-mappings",
            Route::AdminReload => "admin-reload",
            Route::Metadata { .. } => "capabilities",
            Route::Create { .. } => "create",
            Route::Search { .. } | Route::SearchPost { .. } => "search-type",
            Route::HistoryType { .. } => "history-type",
            Route::Read { .. } => "read",
            Route::Update { .. } => "update",
            Route::Patch { .. } => "patch",
            Route::Delete { .. } => "delete",
            Route::HistoryInstance { .. } => "history-instance",
            Route::VRead { .. } => "vread",
            Route::Content { .. } => "content",
            Route::MethodNotAllowed { .. } | Route::NotFound { .. } => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_cover_every_interaction() {
        let r = |m: &str, p: &str| Route::classify(&Method::from_bytes(m.as_bytes()).unwrap(), p);
        let base = "/organizations/demo/fhir/4";
        assert_eq!(r("GET", &format!("{base}/metadata")), Route::Metadata { org: "demo".into() });
        assert_eq!(r("POST", &format!("{base}/Media")), Route::Create { org: "demo".into() });
        assert_eq!(r("GET", &format!("{base}/Media")), Route::Search { org: "demo".into() });
        assert_eq!(r("POST", &format!("{base}/Media/_search")), Route::SearchPost { org: "demo".into() });
        assert_eq!(r("GET", &format!("{base}/Media/_history")), Route::HistoryType { org: "demo".into() });
        assert_eq!(r("GET", &format!("{base}/Media/x")), Route::Read { org: "demo".into(), id: "x".into() });
        assert_eq!(r("PUT", &format!("{base}/Media/x")), Route::Update { org: "demo".into(), id: "x".into() });
        assert_eq!(r("PATCH", &format!("{base}/Media/x")), Route::Patch { org: "demo".into(), id: "x".into() });
        assert_eq!(r("DELETE", &format!("{base}/Media/x")), Route::Delete { org: "demo".into(), id: "x".into() });
        assert_eq!(
            r("GET", &format!("{base}/Media/x/_history")),
            Route::HistoryInstance { org: "demo".into(), id: "x".into() }
        );
        assert_eq!(
            r("GET", &format!("{base}/Media/x/_history/1")),
            Route::VRead { org: "demo".into(), id: "x".into(), version: "1".into() }
        );
        assert_eq!(
            r("GET", &format!("{base}/Media/x/$content")),
            Route::Content { org: "demo".into(), id: "x".into() }
        );
        assert!(matches!(r("POST", &format!("{base}/Media/x")), Route::MethodNotAllowed { .. }));
        assert!(matches!(r("GET", "/organizations/demo/fhir/3/Media"), Route::NotFound { .. }));
        assert!(matches!(r("GET", "/elsewhere"), Route::NotFound { org: None }));
    }
}
