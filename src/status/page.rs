//! The status page itself: one HTML file with its script inlined, both
//! embedded in the binary. The script is allowed by its hash in the
//! Content-Security-Policy, so nothing else can run on the page, and it may
//! only fetch from the port that served it.

use std::sync::OnceLock;

use base64::Engine;
use http_body_util::Full;
use hyper::Response;
use hyper::body::Bytes;

const HTML: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
const SCRIPT_SLOT: &str = "/*SCRIPT*/";

struct Page {
    html: Bytes,
    csp: http::HeaderValue,
}

fn page() -> &'static Page {
    static PAGE: OnceLock<Page> = OnceLock::new();
    PAGE.get_or_init(|| {
        let html = HTML.replacen(SCRIPT_SLOT, SCRIPT, 1);
        let hash = crate::auth::sha256(SCRIPT.as_bytes());
        let hash = base64::engine::general_purpose::STANDARD.encode(hash);
        let csp = format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
        );
        Page {
            html: Bytes::from(html),
            // Built from base64 and fixed text: always a valid header value.
            csp: http::HeaderValue::from_str(&csp)
                .unwrap_or_else(|_| http::HeaderValue::from_static("default-src 'none'")),
        }
    })
}

/// `/status`.
pub fn response() -> Response<Full<Bytes>> {
    let page = page();
    let mut resp = Response::new(Full::new(page.html.clone()));
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(http::header::CONTENT_SECURITY_POLICY, page.csp.clone());
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_inlined_once_and_allowed_by_its_hash() {
        let page = page();
        let html = std::str::from_utf8(&page.html).unwrap();
        assert!(!html.contains(SCRIPT_SLOT));
        assert_eq!(html.matches("setInterval(poll").count(), 1);
        let csp = page.csp.to_str().unwrap();
        assert!(csp.contains("script-src 'sha256-"), "{csp}");
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        // No CDN, no other origin: the page loads nothing from elsewhere.
        assert!(!html.contains("<script src") && !html.contains("stylesheet"));
        assert!(!html.contains("https://"));
    }
}
