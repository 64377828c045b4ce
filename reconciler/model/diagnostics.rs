//! Diagnostics: every problem found in a user's file, with where it is.
//!
//! Invariant: a diagnostic always names its file; line and column are 1-based and
//! present whenever the problem has a place in the text. Rendering is stable, because
//! golden tests and editors parse it: `FILE:LINE:COL: error[CODE]: MESSAGE`.

use std::fmt;

use serde::Serialize;

/// A place in a source file (1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub const fn new(line: u32, col: u32) -> Self {
        Self { line, col }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// The stable codes users can search for; one per kind of problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    YamlSyntax,
    InputLimit,
    UnsafePath,
    Io,
    UnknownField,
    MissingField,
    WrongType,
    InvalidValue,
    UnknownKind,
    UnknownApiVersion,
    WeightRange,
    WeightDecreasing,
    NeverComplete,
    BadDuration,
    UnknownCheck,
    DuplicateCheck,
    UnknownTarget,
    UnknownSource,
    WorkloadMismatch,
    UnsupportedTraffic,
    BadCron,
    BadTimezone,
    DuplicatePlan,
    NameMismatch,
    BadName,
    EmptyStrategy,
    BadPreset,
    BadJudge,
    BadArtifact,
    UnknownPlan,
    BadStatus,
    PolicyDenied,
    PolicyWarning,
    PolicyError,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::YamlSyntax => "yaml-syntax",
            Code::InputLimit => "input-limit",
            Code::UnsafePath => "unsafe-path",
            Code::Io => "io",
            Code::UnknownField => "unknown-field",
            Code::MissingField => "missing-field",
            Code::WrongType => "wrong-type",
            Code::InvalidValue => "invalid-value",
            Code::UnknownKind => "unknown-kind",
            Code::UnknownApiVersion => "unknown-api-version",
            Code::WeightRange => "weight-range",
            Code::WeightDecreasing => "weight-decreasing",
            Code::NeverComplete => "never-complete",
            Code::BadDuration => "bad-duration",
            Code::UnknownCheck => "unknown-check",
            Code::DuplicateCheck => "duplicate-check",
            Code::UnknownTarget => "unknown-target",
            Code::UnknownSource => "unknown-source",
            Code::WorkloadMismatch => "workload-mismatch",
            Code::UnsupportedTraffic => "unsupported-traffic",
            Code::BadCron => "bad-cron",
            Code::BadTimezone => "bad-timezone",
            Code::DuplicatePlan => "duplicate-plan",
            Code::NameMismatch => "name-mismatch",
            Code::BadName => "bad-name",
            Code::EmptyStrategy => "empty-strategy",
            Code::BadPreset => "bad-preset",
            Code::BadJudge => "bad-judge",
            Code::BadArtifact => "bad-artifact",
            Code::UnknownPlan => "unknown-plan",
            Code::BadStatus => "bad-status",
            Code::PolicyDenied => "policy-denied",
            Code::PolicyWarning => "policy-warning",
            Code::PolicyError => "policy-error",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pos: Option<Pos>,
    pub severity: Severity,
    pub code: Code,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(
        file: impl Into<String>,
        pos: Option<Pos>,
        code: Code,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.into(),
            pos,
            severity: Severity::Error,
            code,
            message: message.into(),
            help: None,
        }
    }

    pub fn warning(
        file: impl Into<String>,
        pos: Option<Pos>,
        code: Code,
        message: impl Into<String>,
    ) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(file, pos, code, message)
        }
    }

    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match self.pos {
            Some(p) => write!(f, "{}:{}:{}: ", self.file, p.line, p.col)?,
            None => write!(f, "{}: ", self.file)?,
        }
        write!(f, "{sev}[{}]: {}", self.code, self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Sort diagnostics by file, then place, so output is stable whatever order checks ran in.
pub fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| {
        (a.file.as_str(), a.pos, a.code, a.message.as_str()).cmp(&(
            b.file.as_str(),
            b.pos,
            b.code,
            b.message.as_str(),
        ))
    });
}

/// The closest candidate to `word`, for a "did you mean" hint; `None` when nothing is close.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_file_line_col_code_and_help() {
        let d = Diagnostic::error(
            "plans/a.yaml",
            Some(Pos::new(3, 5)),
            Code::UnknownField,
            "unknown field `stratgy`",
        )
        .with_help("did you mean `strategy`?");
        assert_eq!(
            d.to_string(),
            "plans/a.yaml:3:5: error[unknown-field]: unknown field `stratgy`\n  help: did you mean `strategy`?"
        );
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("stratgy", ["strategy", "target"]),
            Some("strategy")
        );
        assert_eq!(
            did_you_mean("setweight", ["setWeight", "pause"]),
            Some("setWeight")
        );
        assert_eq!(did_you_mean("zzzzzz", ["strategy", "target"]), None);
    }
}
