//! Structural limits on parsed JSON, and what breaking one looks like.

use std::fmt;

/// The deepest nesting that can be configured (below serde_json's own guard of 128 levels).
pub const MAX_DEPTH: usize = 120;

/// How large a parsed document may grow. Strings that are payloads (long base64) are bounded by the
/// body limit instead of `max_string_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Nesting of arrays and objects.
    pub max_depth: usize,
    /// Items in one array.
    pub max_array_items: usize,
    /// Values in the whole document (every object, array, string, number, boolean and null).
    pub max_nodes: usize,
    /// Bytes of one string that is not a payload.
    pub max_string_bytes: usize,
}

impl Limits {
    /// What a client may send: far beyond any real Media, far below what could hurt the gateway.
    pub const CLIENT: Limits =
        Limits { max_depth: 32, max_array_items: 1_000, max_nodes: 10_000, max_string_bytes: 1024 * 1024 };
    /// What an EHR may answer: pages of lists are larger than one resource.
    pub const UPSTREAM: Limits =
        Limits { max_depth: 64, max_array_items: 10_000, max_nodes: 250_000, max_string_bytes: 4 * 1024 * 1024 };

    /// Problems with the values themselves, for config checks.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value) in [
            ("max_depth", self.max_depth),
            ("max_array_items", self.max_array_items),
            ("max_nodes", self.max_nodes),
            ("max_string_bytes", self.max_string_bytes),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be greater than 0"));
            }
        }
        // serde_json stops at 128 levels on its own; past that a document would be called malformed.
        if self.max_depth > MAX_DEPTH {
            problems.push(format!("max_depth must be at most {MAX_DEPTH}"));
        }
        problems
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Depth,
    ArrayItems,
    Nodes,
    StringBytes,
    /// Text that holds the gateway's payload marker (it starts with U+0000, which FHIR text may not hold).
    ReservedText,
}

/// The first limit a document broke, and where (`note`, `entry[0].resource.extension[2]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitViolation {
    pub kind: LimitKind,
    pub limit: usize,
    /// Where it was broken, FHIRPath style, without the root; empty for the root itself.
    pub path: String,
}

impl LimitViolation {
    /// `Media.note` for a path `note` under the root name `Media`.
    pub fn expression(&self, root: &str) -> String {
        match self.path.as_str() {
            "" => root.to_string(),
            p if p.starts_with('[') => format!("{root}{p}"),
            p => format!("{root}.{p}"),
        }
    }

    /// The config key that sets this limit.
    pub fn key(&self) -> &'static str {
        match self.kind {
            LimitKind::Depth => "max_depth",
            LimitKind::ArrayItems => "max_array_items",
            LimitKind::Nodes => "max_nodes",
            LimitKind::StringBytes => "max_string_bytes",
            LimitKind::ReservedText => "reserved text",
        }
    }
}

impl fmt::Display for LimitViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = self.limit;
        match self.kind {
            LimitKind::Depth => write!(f, "nests deeper than {limit} levels"),
            LimitKind::ArrayItems => write!(f, "has more than {limit} items"),
            LimitKind::Nodes => write!(f, "makes the document hold more than {limit} values"),
            LimitKind::StringBytes => write!(f, "is a text longer than {limit} bytes"),
            LimitKind::ReservedText => write!(f, "holds the control character U+0000, which text may not contain"),
        }
    }
}
