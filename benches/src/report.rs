//! Ratios of criterion results, read back from criterion's `estimates.json` files after a
//! bench binary ran its groups.

use std::path::PathBuf;

/// Where criterion keeps its results: `$CRITERION_HOME`, else `criterion/` in the target
/// directory (`$CARGO_TARGET_DIR`, else the one holding this executable:
/// `target/<profile>/deps/<bench>`).
pub fn criterion_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(PathBuf::from(home));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(target).join("criterion"));
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.join("criterion"))
}

/// Criterion's directory name for a group or function id.
fn dir_name(id: &str) -> String {
    id.chars()
        .map(|c| match c {
            '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|' => '_',
            c => c,
        })
        .collect()
}

/// The median time per iteration, in nanoseconds, of `group/function` from the latest run.
pub fn median_ns(group: &str, function: &str) -> Option<f64> {
    let path = criterion_dir()?
        .join(dir_name(group))
        .join(dir_name(function))
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("median")?.get("point_estimate")?.as_f64()
}

/// Prints, for each `(ours, reference)` pair of `group`, both medians, the time ratio
/// ours/reference and the rate of each (per second).
pub fn print_ratios(group: &str, pairs: &[(&str, &str)]) {
    println!("\n== {group}: medians ==");
    println!(
        "{:<34} {:>10} {:>12} {:>34} {:>10} {:>12} {:>8}",
        "ours", "ns", "per s", "reference", "ns", "per s", "ratio"
    );
    for (ours, reference) in pairs {
        match (median_ns(group, ours), median_ns(group, reference)) {
            (Some(a), Some(b)) => println!(
                "{ours:<34} {a:>10.0} {:>12.0} {reference:>34} {b:>10.0} {:>12.0} {:>7.3}x",
                1e9 / a,
                1e9 / b,
                a / b
            ),
            _ => println!("{ours:<34} (no result for this pair in {group})"),
        }
    }
    println!("ratio = time ours / time reference (1.000 = as fast; 1.100 = 10% slower)");
}
