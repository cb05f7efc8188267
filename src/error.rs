//! The gateway's one error type: what happened, which side caused it, and whether a retry may help.
//!
//! Errors travel as values through the stack and are turned into an `OperationOutcome` response only at
//! the edge (`middleware::edge`). Messages never carry credentials, bodies or patient data.

use std::fmt;
use std::time::Duration;

use http::StatusCode;

/// FHIR `IssueType` codes the gateway emits (BRIEF §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueCode {
    Invalid,
    Required,
    NotFound,
    NotSupported,
    BusinessRule,
    Conflict,
    Security,
    Forbidden,
    Throttled,
    Timeout,
    Transient,
    Exception,
    TooLong,
    TooCostly,
}

impl IssueCode {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Required => "required",
            IssueCode::NotFound => "not-found",
            IssueCode::NotSupported => "not-supported",
            IssueCode::BusinessRule => "business-rule",
            IssueCode::Conflict => "conflict",
            IssueCode::Security => "security",
            IssueCode::Forbidden => "forbidden",
            IssueCode::Throttled => "throttled",
            IssueCode::Timeout => "timeout",
            IssueCode::Transient => "transient",
            IssueCode::Exception => "exception",
            IssueCode::TooLong => "too-long",
            IssueCode::TooCostly => "too-costly",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        Some(match code {
            "invalid" => IssueCode::Invalid,
            "required" => IssueCode::Required,
            "not-found" => IssueCode::NotFound,
            "not-supported" => IssueCode::NotSupported,
            "business-rule" => IssueCode::BusinessRule,
            "conflict" => IssueCode::Conflict,
            "security" => IssueCode::Security,
            "forbidden" => IssueCode::Forbidden,
            "throttled" => IssueCode::Throttled,
            "timeout" => IssueCode::Timeout,
            "transient" => IssueCode::Transient,
            "exception" => IssueCode::Exception,
            "too-long" => IssueCode::TooLong,
            "too-costly" => IssueCode::TooCostly,
            _ => return None,
        })
    }
}

/// Which side of the gateway caused a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// The caller sent something we cannot accept; fixing the request helps, retrying does not.
    Client,
    /// The gateway itself failed (bug, misconfiguration, overload).
    Gateway,
    /// The named EHR failed or refused.
    Upstream(String),
}

/// One problem inside an error, usually tied to an element of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub code: IssueCode,
    pub message: String,
    /// FHIRPath-style locations, e.g. `Media.content.data`.
    pub expression: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct GatewayError {
    pub status: StatusCode,
    pub side: Side,
    pub retryable: bool,
    /// How long the caller should wait before retrying, when known.
    pub retry_after: Option<Duration>,
    /// The upstream never answered (timeout, broken connection): a write may or may not have happened.
    pub no_answer: bool,
    /// For a 405: the methods the resource does allow (the `Allow` header).
    pub allow: Option<String>,
    pub issues: Vec<Issue>,
}

impl GatewayError {
    pub fn new(status: StatusCode, code: IssueCode, side: Side, message: impl Into<String>) -> Self {
        GatewayError {
            status,
            side,
            retryable: false,
            retry_after: None,
            no_answer: false,
            allow: None,
            issues: vec![Issue { code, message: message.into(), expression: Vec::new() }],
        }
    }

    /// A client error: status + code + what to fix.
    pub fn client(status: StatusCode, code: IssueCode, message: impl Into<String>) -> Self {
        Self::new(status, code, Side::Client, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::client(StatusCode::BAD_REQUEST, IssueCode::Invalid, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::client(StatusCode::NOT_FOUND, IssueCode::NotFound, message)
    }

    pub fn gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, Side::Gateway, message)
    }

    /// Several client issues reported at once (validation).
    pub fn client_issues(status: StatusCode, issues: Vec<Issue>) -> Self {
        GatewayError {
            status,
            side: Side::Client,
            retryable: false,
            retry_after: None,
            no_answer: false,
            allow: None,
            issues,
        }
    }

    pub fn with_expression(mut self, expression: impl Into<String>) -> Self {
        if let Some(issue) = self.issues.first_mut() {
            issue.expression.push(expression.into());
        }
        self
    }

    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    pub fn with_allow(mut self, methods: impl Into<String>) -> Self {
        self.allow = Some(methods.into());
        self
    }

    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// The first issue's code, which decides how the failure is classified in logs.
    pub fn code(&self) -> IssueCode {
        self.issues.first().map(|i| i.code).unwrap_or(IssueCode::Exception)
    }

    pub fn message(&self) -> &str {
        self.issues.first().map(|i| i.message.as_str()).unwrap_or("")
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code().as_str(), self.message())
    }
}

impl std::error::Error for GatewayError {}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
