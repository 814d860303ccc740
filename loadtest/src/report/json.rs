//! The JSON line: the whole model on one line, the form scripts read.

use super::Report;

impl Report {
    /// One line of JSON; should serialization ever fail, a JSON object that
    /// says why, so that a script still reads one object per run.
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}
