//! Command-line numbers for the benchmark drivers.

/// Positional argument `i` parsed, or `default` when absent or unparsable.
pub(crate) fn arg<T: std::str::FromStr>(i: usize, default: T) -> T {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}
