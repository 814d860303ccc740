//! The test page (`GET /`) and the browser client (`GET /realtime.js`),
//! embedded in the binary.

/// The browser client, an ES module.
pub const SCRIPT: &str = include_str!("web/realtime.js");

const PAGE: &str = include_str!("web/index.html");

/// The test page; in dev mode the user token field is pre-filled.
pub fn page(dev_token: Option<&str>) -> String {
    let token = dev_token.unwrap_or("");
    // Tokens are base64url and dots; escape anyway so the page stays HTML.
    let safe: String = token
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    PAGE.replace("{{DEV_TOKEN}}", &safe)
}
