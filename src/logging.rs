//! Log output: JSON lines (default) or human-readable, filtered by `RUST_LOG` (default `info`).
//! What gets logged is decided at the call sites: ids and outcomes, never bodies, tokens or patient data.

use tracing_subscriber::EnvFilter;

pub fn init(format: &str) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // HTTP libraries log URLs (Canvas redirects to presigned S3 URLs) at debug level: never let them.
    for quiet in ["reqwest=info", "hyper=info", "hyper_util=info", "h2=info", "rustls=info"] {
        if let Ok(directive) = quiet.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = if format == "pretty" {
        builder.try_init()
    } else {
        builder.json().with_current_span(true).with_span_list(false).try_init()
    };
}
