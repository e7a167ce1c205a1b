//! `report.html`: one self-contained page (inline SVG, no scripts from elsewhere) with
//! throughput and latency over time, each fault shaded, and the anomalies found.

use crate::history::{Event, Kind, NEMESIS};
use serde_json::Value;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Fault intervals (start s, end s, label) from the nemesis events.
fn faults(events: &[Event], end_s: f64) -> Vec<(f64, f64, String)> {
    let mut out = Vec::new();
    let mut open: Option<(f64, String)> = None;
    for e in events.iter().filter(|e| e.process == NEMESIS) {
        let t = e.time_ns as f64 / 1e9;
        match e.kind {
            Kind::Invoke => open = Some((t, format!("{} {}", e.f, e.value))),
            _ => {
                if let Some((s, label)) = open.take() {
                    out.push((s, t, label));
                }
            }
        }
    }
    if let Some((s, label)) = open {
        out.push((s, end_s, label));
    }
    out
}

pub fn html(events: &[Event], results: &Value) -> String {
    let ops = crate::history::pair(events);
    let end_s = events.last().map(|e| e.time_ns as f64 / 1e9).unwrap_or(1.0).max(1.0);
    let seconds = end_s.ceil() as usize + 1;
    // Per second: ok, fail, info completions; latency max and median of ok ops (ms).
    let mut per: Vec<(u32, u32, u32, Vec<f64>)> = vec![(0, 0, 0, Vec::new()); seconds];
    for o in &ops {
        let s = (o.invoke_ns as f64 / 1e9) as usize;
        let Some(slot) = per.get_mut(s) else { continue };
        match o.outcome {
            Kind::Ok => {
                slot.0 += 1;
                if let Some(c) = o.complete_ns {
                    slot.3.push((c.saturating_sub(o.invoke_ns)) as f64 / 1e6);
                }
            }
            Kind::Fail => slot.1 += 1,
            _ => slot.2 += 1,
        }
    }
    let max_rate = per.iter().map(|p| p.0 + p.1 + p.2).max().unwrap_or(1).max(1) as f64;
    let max_lat = per.iter().flat_map(|p| p.3.iter().copied()).fold(1.0f64, f64::max);
    let (w, h, pad) = (900.0, 220.0, 40.0);
    let x = |t: f64| pad + (w - 2.0 * pad) * t / end_s;
    let mut svg = String::new();
    let chart = |svg: &mut String, title: &str| {
        svg.push_str(&format!(
            "<h3>{}</h3><svg width=\"{w}\" height=\"{h}\" xmlns=\"http://www.w3.org/2000/svg\">",
            esc(title)
        ));
        for (s, e, label) in faults(events, end_s) {
            svg.push_str(&format!(
                "<rect x=\"{:.1}\" y=\"0\" width=\"{:.1}\" height=\"{h}\" fill=\"#f6d5d5\"><title>{}</title></rect>",
                x(s),
                (x(e) - x(s)).max(1.0),
                esc(&label)
            ));
        }
        svg.push_str(&format!(
            "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/>",
            h - pad,
            w - pad,
            h - pad
        ));
        for t in (0..=(end_s as usize)).step_by(((end_s / 10.0).ceil() as usize).max(1)) {
            svg.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{t}s</text>",
                x(t as f64),
                h - pad + 14.0
            ));
        }
    };
    chart(&mut svg, &format!("Throughput (ops/s; max {max_rate:.0}): ok green, fail red, info orange; faults shaded"));
    let bar = (w - 2.0 * pad) / seconds as f64;
    let y = |v: f64, max: f64| (h - pad) - (h - 2.0 * pad) * v / max;
    for (s, p) in per.iter().enumerate() {
        let mut base = 0.0;
        for (count, colour) in [(p.0, "#3a3"), (p.1, "#c33"), (p.2, "#e90")] {
            if count == 0 {
                continue;
            }
            let top = base + count as f64;
            svg.push_str(&format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>",
                x(s as f64),
                y(top, max_rate),
                bar.max(1.0) * 0.9,
                y(base, max_rate) - y(top, max_rate)
            ));
            base = top;
        }
    }
    // Each anomaly's operation: a red line at its invocation.
    for a in results["anomalies"].as_array().into_iter().flatten() {
        if let Some(ms) = a["op"]["invoke_ms"].as_f64() {
            svg.push_str(&format!(
                "<line x1=\"{0:.1}\" y1=\"0\" x2=\"{0:.1}\" y2=\"{1}\" stroke=\"#d00\" stroke-width=\"2\"><title>{2}</title></line>",
                x(ms / 1000.0),
                h - pad,
                esc(&a["op"]["op"].to_string())
            ));
        }
    }
    svg.push_str("</svg>");
    chart(&mut svg, &format!("Latency of ok operations (ms, log scale; max {max_lat:.0}): median blue, max grey"));
    let ly = |v: f64| {
        (h - pad) - (h - 2.0 * pad) * (v.max(0.1).ln() - 0.1f64.ln()) / (max_lat.max(1.0).ln() - 0.1f64.ln()).max(0.1)
    };
    for (s, p) in per.iter().enumerate() {
        if p.3.is_empty() {
            continue;
        }
        let mut l = p.3.clone();
        l.sort_by(|a, b| a.total_cmp(b));
        let med = l[l.len() / 2];
        let mx = l[l.len() - 1];
        svg.push_str(&format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"#999\"/>", x(s as f64 + 0.5), ly(mx)));
        svg.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"#36c\"/>",
            x(s as f64 + 0.5),
            ly(med)
        ));
    }
    svg.push_str("</svg>");
    let valid = &results["valid"];
    let colour = match valid {
        Value::Bool(true) => "#2a2",
        Value::Bool(false) => "#c22",
        _ => "#e90",
    };
    let anomalies = results["anomalies"].as_array().cloned().unwrap_or_default();
    let mut anomaly_html = String::new();
    if anomalies.is_empty() {
        anomaly_html.push_str("<p>No anomaly.</p>");
    }
    for a in anomalies.iter().take(20) {
        anomaly_html.push_str(&format!(
            "<pre style=\"background:#fee;border-left:4px solid #c22;padding:6px\">{}</pre>",
            esc(&serde_json::to_string_pretty(a).unwrap_or_default())
        ));
    }
    let mut fault_rows = String::new();
    for (s, e, label) in faults(events, end_s) {
        fault_rows.push_str(&format!("<tr><td>{s:.1}</td><td>{e:.1}</td><td>{}</td></tr>", esc(&label)));
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>moonraft-jepsen {workload} / {nemesis}</title></head>\
<body style=\"font-family:sans-serif;max-width:960px;margin:auto\">\
<h1>moonraft-jepsen: {workload} with {nemesis}</h1>\
<p style=\"font-size:1.4em\">valid: <b style=\"color:{colour}\">{valid}</b> &mdash; {ops} operations: {ok} ok, {fail} fail, {info} info; lost: {lost}</p>\
{svg}<h2>Anomalies</h2>{anomaly_html}<h2>Faults</h2><table border=\"1\" cellpadding=\"3\"><tr><th>from s</th><th>to s</th><th>fault</th></tr>{fault_rows}</table>\
<h2>results.json</h2><pre>{results_json}</pre></body></html>",
        workload = esc(results["workload"].as_str().unwrap_or("")),
        nemesis = esc(&results["nemesis"].to_string()),
        ops = results["ops"],
        ok = results["ok"],
        fail = results["fail"],
        info = results["info"],
        lost = results["lost"],
        results_json = esc(&serde_json::to_string_pretty(results).unwrap_or_default()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Note, Recorder};
    use serde_json::json;

    #[test]
    fn the_page_shades_faults_and_marks_anomalies() {
        let r = Recorder::new(None).unwrap();
        let op = |p: u64| Note { process: p, f: "read".into(), key: Some("k".into()), ..Note::default() };
        r.record(
            Kind::Invoke,
            Note { process: NEMESIS, f: "kill".into(), value: json!({"process": "broker1"}), ..Note::default() },
        );
        r.record(Kind::Invoke, op(1));
        r.record(Kind::Ok, op(1));
        r.record(Kind::Ok, Note { process: NEMESIS, f: "kill".into(), ..Note::default() });
        let results = json!({"valid": false, "workload": "register", "nemesis": ["kill"], "ops": 1, "ok": 1, "fail": 0,
            "info": 0, "lost": 0, "anomalies": [{"type": "not-linearizable", "op": {"invoke_ms": 0.5, "op": "Read(Some(<1>))"}}]});
        let page = html(&r.events(), &results);
        assert!(page.contains("fill=\"#f6d5d5\""), "a shaded fault");
        assert!(page.contains("stroke=\"#d00\""), "the anomaly's line");
        assert!(page.contains("Read(Some(&lt;1&gt;))"), "escaped");
        assert!(page.contains("color:#c22\">false"));
    }
}
