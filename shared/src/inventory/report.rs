//! Report outputs: JSON (schema in `docs/report-schema.json`, version 1),
//! CSV, and one self-contained HTML page (no external assets) with a
//! summary, a chart of rotation age, a chart of status counts and a
//! sortable table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::classify::{Classified, Rules, STATUSES, classify};
use super::{Inventory, PlaintextCredential};
use crate::error::{Error, Result};
use crate::time::rfc3339;

/// What `--fail-on` accepts: every status, and `plaintext` for credentials
/// found outside the store.
pub fn fail_on_statuses() -> Vec<&'static str> {
    let mut known = STATUSES.to_vec();
    known.push("plaintext");
    known
}

/// Refuses a `--fail-on` list naming a status that does not exist: a typo
/// would match no secret and silently open the gate.
pub fn check_fail_on(statuses: &[String]) -> Result<()> {
    let known = fail_on_statuses();
    let unknown: Vec<&str> = statuses
        .iter()
        .map(String::as_str)
        .filter(|s| !known.contains(s))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(Error::Config(format!(
        "--fail-on: unknown status {}; use one or more (comma-separated) of {}",
        unknown
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        known.join(", ")
    )))
}

/// The schema version written into every JSON report.
pub const SCHEMA_VERSION: u32 = 1;

/// Counts for the summary.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    pub total: usize,
    pub compliant: usize,
    pub non_compliant: usize,
    /// Secrets per primary status (every status present, zero included).
    pub by_status: BTreeMap<String, usize>,
    /// Findings per status (a secret may have several).
    pub findings_by_status: BTreeMap<String, usize>,
    pub plaintext_credentials: usize,
}

/// The report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub generated_at: String,
    pub rules: Rules,
    pub summary: Summary,
    pub secrets: Vec<Classified>,
    pub plaintext_credentials: Vec<PlaintextCredential>,
    pub api_calls: BTreeMap<String, u64>,
}

impl Report {
    /// Classifies an inventory at `now`.
    pub fn build(inventory: &Inventory, now: u64, rules: &Rules) -> Report {
        let mut secrets: Vec<Classified> = inventory
            .secrets
            .iter()
            .map(|s| classify(s, now, rules))
            .collect();
        // The order the page's Name column sorts by: case-insensitive.
        secrets.sort_by_key(|s| s.secret.name.to_lowercase());
        let mut summary = Summary {
            total: secrets.len(),
            plaintext_credentials: inventory.plaintext.len(),
            ..Default::default()
        };
        for status in STATUSES {
            summary.by_status.insert(status.to_string(), 0);
            summary.findings_by_status.insert(status.to_string(), 0);
        }
        for s in &secrets {
            *summary.by_status.entry(s.status.clone()).or_default() += 1;
            for f in &s.findings {
                *summary
                    .findings_by_status
                    .entry(f.status.clone())
                    .or_default() += 1;
            }
        }
        summary.compliant = summary.by_status.get("compliant").copied().unwrap_or(0);
        summary.non_compliant = summary.total - summary.compliant;
        Report {
            schema_version: SCHEMA_VERSION,
            generated_at: rfc3339(now),
            rules: rules.clone(),
            summary,
            secrets,
            plaintext_credentials: inventory.plaintext.clone(),
            api_calls: inventory.api_calls.clone(),
        }
    }

    /// Whether any secret has a finding with one of these statuses
    /// (`plaintext` also matches a credential found outside the store).
    pub fn has_any(&self, statuses: &[String]) -> bool {
        statuses.iter().any(|wanted| {
            (wanted == "plaintext" && !self.plaintext_credentials.is_empty())
                || self.secrets.iter().any(|s| {
                    s.findings.iter().any(|f| &f.status == wanted)
                        || (wanted == "compliant" && s.status == "compliant")
                })
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "name,arn,status,findings,rotation_enabled,rotation_interval_days,last_rotated,last_accessed,next_rotation,rotation_age_days,tags\n",
        );
        let date = |t: Option<u64>| t.map(rfc3339).unwrap_or_default();
        for s in &self.secrets {
            let r = &s.secret;
            let fields = [
                r.name.clone(),
                r.arn.clone(),
                s.status.clone(),
                s.findings
                    .iter()
                    .map(|f| format!("{}: {}", f.status, f.rule))
                    .collect::<Vec<_>>()
                    .join("; "),
                r.rotation_enabled.to_string(),
                r.rotation_interval_days
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
                date(r.last_rotated),
                date(r.last_accessed),
                date(r.next_rotation),
                s.rotation_age_days
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
                r.tags
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(";"),
            ];
            let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
            out.push_str(&line.join(","));
            out.push('\n');
        }
        out
    }

    pub fn to_html(&self) -> String {
        let mut rows = String::new();
        for s in &self.secrets {
            let r = &s.secret;
            let _ = writeln!(
                rows,
                "<tr data-status=\"{st}\"><td>{name}</td><td class=\"status {st}\">{st}</td><td data-sort=\"{age}\">{age_text}</td><td>{rot}</td><td data-sort=\"{lr}\">{lr_text}</td><td data-sort=\"{la}\">{la_text}</td><td>{findings}</td></tr>",
                name = html(&r.name),
                st = html(&s.status),
                age = s.rotation_age_days.map_or(-1, |d| d as i64),
                age_text = s
                    .rotation_age_days
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "–".into()),
                rot = if r.rotation_enabled { "on" } else { "off" },
                lr = r.last_rotated.unwrap_or(0),
                lr_text = r
                    .last_rotated
                    .map(rfc3339)
                    .unwrap_or_else(|| "never".into()),
                la = r.last_accessed.unwrap_or(0),
                la_text = r.last_accessed.map(rfc3339).unwrap_or_else(|| "–".into()),
                findings = html(
                    &s.findings
                        .iter()
                        .map(|f| f.rule.clone())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            );
        }
        let mut plaintext = String::new();
        for p in &self.plaintext_credentials {
            let _ = writeln!(
                plaintext,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                html(&p.kind),
                html(&p.location),
                html(&p.name),
                html(&p.reason)
            );
        }
        let status_chart = bar_chart(
            "status-chart",
            "Secrets by status",
            // Most severe first.
            &STATUSES
                .iter()
                .map(|s| {
                    (
                        s.to_string(),
                        self.summary.by_status.get(*s).copied().unwrap_or(0),
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect::<Vec<_>>(),
        );
        let buckets = [
            (0, 30, "0–30 d"),
            (31, 60, "31–60 d"),
            (61, 90, "61–90 d"),
            (91, 180, "91–180 d"),
            (181, 365, "181–365 d"),
            (366, u64::MAX, "> 1 y"),
        ];
        let mut ages: Vec<(String, usize)> =
            buckets.iter().map(|(_, _, l)| (l.to_string(), 0)).collect();
        ages.push(("unknown".to_string(), 0));
        for s in &self.secrets {
            let i = s
                .rotation_age_days
                .and_then(|d| buckets.iter().position(|(lo, hi, _)| d >= *lo && d <= *hi))
                .unwrap_or(buckets.len());
            ages[i].1 += 1;
        }
        let age_chart = bar_chart("age-chart", "Days since last rotation", &ages);
        let summary = &self.summary;
        format!(
            r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Rotor secrets report {generated}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;color:#1d2430}}
h1{{font-size:1.4rem}} .cards{{display:flex;gap:1rem;flex-wrap:wrap}}
.card{{border:1px solid #d0d7de;border-radius:6px;padding:.6rem 1rem;min-width:9rem}}
.card b{{display:block;font-size:1.6rem}}
.charts{{display:flex;gap:2rem;flex-wrap:wrap;margin:1.5rem 0}}
figure{{margin:0}} td[data-sort]{{white-space:nowrap}}
table{{border-collapse:collapse;width:100%;font-size:.9rem}} th,td{{border-bottom:1px solid #e5e8eb;padding:.35rem .5rem;text-align:left;vertical-align:top}}
th{{cursor:pointer;background:#f6f8fa;user-select:none}} th.sorted-asc::after{{content:" ▲"}} th.sorted-desc::after{{content:" ▼"}}
.status{{font-weight:600}} .compliant{{color:#1a7f37}} .rotation_stuck,.rotation_overdue{{color:#cf222e}}
</style></head><body>
<h1>Rotor secrets report</h1>
<p>Generated {generated}. {total} secret(s), {plaintext} credential(s) found outside the secret store.</p>
<div class="cards" id="summary">
<div class="card" id="summary-total"><b>{total}</b>secrets</div>
<div class="card" id="summary-compliant"><b>{compliant}</b>compliant</div>
<div class="card" id="summary-non-compliant"><b>{non_compliant}</b>non-compliant</div>
<div class="card" id="summary-plaintext"><b>{plaintext}</b>plaintext credentials</div>
</div>
<div class="charts">{status_chart}{age_chart}</div>
<h2>Secrets</h2>
<table id="secrets"><thead><tr><th data-type="text">Name</th><th data-type="text">Status</th><th data-type="number">Rotation age (days)</th><th data-type="text">Rotation</th><th data-type="number">Last rotated</th><th data-type="number">Last accessed</th><th data-type="text">Findings</th></tr></thead>
<tbody>
{rows}</tbody></table>
<h2>Credentials outside the secret store</h2>
<table id="plaintext"><thead><tr><th data-type="text">Kind</th><th data-type="text">Location</th><th data-type="text">Name</th><th data-type="text">Why</th></tr></thead>
<tbody>
{plaintext_rows}</tbody></table>
<script>
document.querySelectorAll("table").forEach(function (table) {{
  table.querySelectorAll("th").forEach(function (th, col) {{
    th.addEventListener("click", function () {{
      var asc = !th.classList.contains("sorted-asc");
      table.querySelectorAll("th").forEach(function (h) {{ h.classList.remove("sorted-asc", "sorted-desc"); }});
      th.classList.add(asc ? "sorted-asc" : "sorted-desc");
      var numeric = th.dataset.type === "number";
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {{
        var x = a.cells[col], y = b.cells[col];
        var p = numeric ? Number(x.dataset.sort) : x.textContent.toLowerCase();
        var q = numeric ? Number(y.dataset.sort) : y.textContent.toLowerCase();
        return (p < q ? -1 : p > q ? 1 : 0) * (asc ? 1 : -1);
      }});
      rows.forEach(function (r) {{ body.appendChild(r); }});
    }});
  }});
}});
</script>
</body></html>
"#,
            generated = html(&self.generated_at),
            total = summary.total,
            compliant = summary.compliant,
            non_compliant = summary.non_compliant,
            plaintext = summary.plaintext_credentials,
            plaintext_rows = plaintext,
        )
    }
}

/// An inline SVG bar chart.
fn bar_chart(id: &str, title: &str, bars: &[(String, usize)]) -> String {
    let max = bars.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let height = 24 * bars.len().max(1) + 30;
    let mut svg = format!(
        "<figure><figcaption>{}</figcaption><svg id=\"{id}\" class=\"chart\" role=\"img\" aria-label=\"{}\" width=\"420\" height=\"{height}\" viewBox=\"0 0 420 {height}\">",
        html(title),
        html(title)
    );
    for (i, (label, n)) in bars.iter().enumerate() {
        let y = 10 + i * 24;
        let w = (*n as f64 / max as f64 * 230.0).round() as usize;
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{ty}\" font-size=\"11\">{label}</text><rect class=\"bar\" x=\"160\" y=\"{y}\" width=\"{w}\" height=\"16\" fill=\"#0969da\"><title>{label}: {n}</title></rect><text x=\"{tx}\" y=\"{ty}\" font-size=\"12\">{n}</text>",
            ty = y + 12,
            tx = 165 + w,
            label = html(label)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::super::SecretRecord;
    use super::*;

    #[test]
    fn fail_on_refuses_unknown_statuses() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        check_fail_on(&list(&fail_on_statuses())).expect("every known status");
        check_fail_on(&[]).expect("no gate");
        let e = check_fail_on(&list(&["rotation_stuck", "rotation_stuk"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"rotation_stuk\"") && e.contains("plaintext"),
            "{e}"
        );
        assert!(STATUSES.iter().all(|s| e.contains(s)), "{e}");
    }

    #[test]
    fn outputs_escape_and_count() {
        let inventory = Inventory {
            secrets: vec![
                SecretRecord {
                    arn: "a1".into(),
                    name: "x<script>,\"q\"".into(),
                    rotation_enabled: false,
                    ..Default::default()
                },
                SecretRecord {
                    arn: "a2".into(),
                    name: "ok".into(),
                    rotation_enabled: true,
                    last_rotated: Some(1000),
                    created: Some(1000),
                    tags: [("owner".to_string(), "t".to_string())].into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let r = Report::build(&inventory, 2000, &Rules::default());
        assert_eq!(
            (
                r.summary.total,
                r.summary.compliant,
                r.summary.non_compliant
            ),
            (2, 1, 1)
        );
        let html = r.to_html();
        assert!(!html.contains("x<script>") && html.contains("x&lt;script&gt;"));
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "self-contained"
        );
        let csv = r.to_csv();
        assert!(csv.contains("\"x<script>,\"\"q\"\"\""), "{csv}");
        assert!(r.has_any(&["rotation_disabled".into()]) && !r.has_any(&["rotation_stuck".into()]));
    }
}
