//! The dashboard: one server-rendered HTML page with SVG charts, no script
//! or style from anywhere else, so it works offline on a laptop or a
//! phone. A few lines of inline script sort the vehicle table and, while
//! a run goes on, poll `/api/v1/status` and swap in `/dashboard/live` (the
//! charts and table) when a round closes.
//!
//! Each chart is a `<figure class="chart" data-metric=...>` whose SVG holds
//! one `<g class="pt" data-round=N>` per closed round; each vehicle is one
//! `<tr>` of `table#vehicles`.

use super::svg::{
    BLUE, Chart, Draw, GREEN, GREY, ORANGE, PURPLE, RED, bytes, percent, plain, ratio, seconds,
    series,
};
use super::{LiveState, Settings};

pub use super::svg::esc;
use convoy_shared::units::human_bytes;
use convoy_store::{RoundRow, RoundStatus, Store, StoreError, VehicleSummary};
use std::fmt::Write as _;

/// Closed rounds the charts show (the newest).
pub const CHART_ROUNDS: u64 = 200;

fn charts(rounds: &[&RoundRow]) -> Vec<Chart> {
    let overhead = |wire: u64, payload: u64| Some(wire.saturating_sub(payload) as f64);
    let ratio_of = |raw: u64, sent: u64| (sent > 0).then(|| raw as f64 / sent as f64);
    let regression =
        rounds.iter().all(|r| r.accuracy.is_none()) && rounds.iter().any(|r| r.rmse.is_some());
    let quality = if regression {
        Chart {
            metric: "rmse",
            title: "Test RMSE".into(),
            log: false,
            format: plain,
            series: vec![series("RMSE", PURPLE, Draw::Line, rounds, |r| r.rmse)],
        }
    } else {
        Chart {
            metric: "accuracy",
            title: "Test accuracy".into(),
            log: false,
            format: percent,
            series: vec![series("accuracy", PURPLE, Draw::Line, rounds, |r| {
                r.accuracy
            })],
        }
    };
    vec![
        Chart {
            metric: "bytes_up",
            title: "Uplink bytes per round".into(),
            log: false,
            format: bytes,
            series: vec![
                series("payload", BLUE, Draw::Bar, rounds, |r| {
                    Some(r.bytes_up as f64)
                }),
                series("MQTT overhead", GREY, Draw::Bar, rounds, |r| {
                    overhead(r.wire_bytes_up, r.bytes_up)
                }),
            ],
        },
        Chart {
            metric: "bytes_down",
            title: "Downlink bytes per round".into(),
            log: false,
            format: bytes,
            series: vec![
                series("payload", ORANGE, Draw::Bar, rounds, |r| {
                    Some(r.bytes_down as f64)
                }),
                series("MQTT overhead", GREY, Draw::Bar, rounds, |r| {
                    overhead(r.wire_bytes_down, r.bytes_down)
                }),
            ],
        },
        Chart {
            metric: "fp32_bytes",
            title: "Sent vs what dense fp32 would have cost (log scale)".into(),
            log: true,
            format: bytes,
            series: vec![
                series("fp32 up + down", RED, Draw::Line, rounds, |r| {
                    Some((r.bytes_up_raw + r.bytes_down_raw) as f64)
                }),
                series("sent (wire) up + down", BLUE, Draw::Line, rounds, |r| {
                    Some((r.wire_bytes_up + r.wire_bytes_down) as f64)
                }),
            ],
        },
        Chart {
            metric: "compression_ratio",
            title: "Compression ratio (fp32 / payload)".into(),
            log: false,
            format: ratio,
            series: vec![
                series("uplink", BLUE, Draw::Line, rounds, |r| {
                    ratio_of(r.bytes_up_raw, r.bytes_up)
                }),
                series("downlink", ORANGE, Draw::Line, rounds, |r| {
                    ratio_of(r.bytes_down_raw, r.bytes_down)
                }),
            ],
        },
        Chart {
            metric: "train_seconds",
            title: "Retraining seconds".into(),
            log: false,
            format: seconds,
            series: vec![
                series("sum over vehicles", GREEN, Draw::Bar, rounds, |r| {
                    Some(r.train_seconds_sum)
                }),
                series("slowest vehicle", RED, Draw::Line, rounds, |r| {
                    Some(r.train_seconds_max)
                }),
            ],
        },
        Chart {
            metric: "vehicles",
            title: "Vehicles per round".into(),
            log: false,
            format: plain,
            series: vec![
                series("reported", GREEN, Draw::Bar, rounds, |r| {
                    Some(r.clients_reported as f64)
                }),
                series("late", ORANGE, Draw::Bar, rounds, |r| {
                    Some(r.clients_late as f64)
                }),
                series("failed", RED, Draw::Bar, rounds, |r| {
                    Some(r.clients_failed as f64)
                }),
                series("selected", GREY, Draw::Line, rounds, |r| {
                    Some(r.clients_selected as f64)
                }),
            ],
        },
        quality,
    ]
}

fn vehicle_table(vehicles: &[VehicleSummary], current: Option<&str>) -> String {
    let mut out = String::from(
        "<table id=\"vehicles\"><thead><tr>\
         <th data-type=\"text\">vehicle</th><th>accepted</th><th>rounds</th><th>bytes up</th>\
         <th>bytes down</th><th>MQTT bytes</th><th>train s</th><th data-type=\"text\">last seen</th>\
         <th data-type=\"text\">device</th><th data-type=\"text\">model</th><th>rejections</th>\
         <th>suspected</th><th>budget used</th></tr></thead><tbody>",
    );
    for v in vehicles {
        let model = match (&v.model_version, current) {
            (Some(m), Some(c)) if m == c => format!("{} (current)", &m[..m.len().min(12)]),
            (Some(m), _) => m[..m.len().min(12)].to_string(),
            (None, _) => "-".into(),
        };
        let budget = v
            .budget_used
            .map_or("-".to_string(), |b| format!("{:.0}%", b * 100.0));
        let wire = v.wire_bytes_up + v.wire_bytes_down;
        let _ = write!(
            out,
            "<tr><td>{}</td><td data-v=\"{}\">{}</td><td data-v=\"{}\">{}</td>\
             <td data-v=\"{}\">{}</td><td data-v=\"{}\">{}</td><td data-v=\"{wire}\">{}</td>\
             <td data-v=\"{:.3}\">{:.2}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td data-v=\"{}\">{}</td><td data-v=\"{}\">{}</td>\
             <td data-v=\"{}\">{budget}</td></tr>",
            esc(&if v.blocked {
                format!("{} (blocked)", v.client)
            } else {
                v.client.clone()
            }),
            v.accepted,
            v.accepted,
            v.rounds,
            v.rounds,
            v.bytes_up,
            human_bytes(v.bytes_up),
            v.bytes_down,
            human_bytes(v.bytes_down),
            human_bytes(wire),
            v.train_seconds,
            v.train_seconds,
            esc(v.last_seen.as_deref().unwrap_or("-")),
            esc(v.device.as_deref().unwrap_or("-")),
            esc(&model),
            v.rejections,
            v.rejections,
            v.suspected,
            v.suspected,
            v.budget_used.unwrap_or(-1.0),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// The part of the page that changes as rounds close: summary, charts,
/// vehicle table (`/dashboard/live`).
pub fn live_part(
    store: &Store,
    settings: &Settings,
    live: &LiveState,
    now_ms: u64,
) -> Result<String, StoreError> {
    let closed = store.newest_closed_rounds(CHART_ROUNDS)?;
    let rounds: Vec<&RoundRow> = closed.iter().collect();
    let numbers: Vec<u64> = rounds.iter().map(|r| r.round).collect();
    let vehicles = store.vehicle_summaries(now_ms, settings.caps())?;
    let current = store.current_version()?;
    let totals = store.ledger_totals(&[])?;
    let sums = &totals.sums;
    let (up, down) = (sums.wire_bytes_up, sums.wire_bytes_down);
    let raw = sums.bytes_up_raw + sums.bytes_down_raw;
    let closed_count = totals.closed();
    let open = (totals.count(RoundStatus::Open) > 0)
        .then_some(totals.newest_round)
        .flatten();
    let shown = if closed_count > rounds.len() as u64 {
        format!(" (charts: the newest {})", rounds.len())
    } else {
        String::new()
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "<p class=\"summary\" data-closed=\"{closed_count}\">{closed_count} closed rounds{shown}{}; sent {} up, {} down (MQTT), \
         dense fp32 would have been {}; model {}; broker {}; {}</p>",
        open.map(|r| format!(", round {r} open"))
            .unwrap_or_default(),
        human_bytes(up),
        human_bytes(down),
        human_bytes(raw),
        esc(current.as_deref().map_or("-", |c| &c[..c.len().min(12)])),
        if live.broker_connected() {
            "connected"
        } else {
            "not connected"
        },
        live.phase.as_str(),
    );
    out.push_str("<section class=\"charts\">");
    for chart in charts(&rounds) {
        out.push_str(&chart.render(&numbers));
    }
    out.push_str("</section><h2>Vehicles</h2>");
    out.push_str("<div class=\"wrap\">");
    out.push_str(&vehicle_table(&vehicles, current.as_deref()));
    out.push_str("</div>");
    Ok(out)
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:0;padding:12px;color:#1a202c;background:#f7fafc}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 6px}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:12px}
figure{margin:0;background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:8px}
figcaption{font-weight:600;margin-bottom:4px}svg{width:100%;height:auto}
.axis{stroke:#718096;stroke-width:1}.tick{font-size:11px;fill:#4a5568}.line{stroke-width:2}
.legend span{margin-right:10px;font-size:12px;white-space:nowrap}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
.pt:hover rect,.pt:hover circle{opacity:.7}
.wrap{overflow-x:auto}table{border-collapse:collapse;background:#fff;min-width:100%}
th,td{padding:4px 8px;border-bottom:1px solid #e2e8f0;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}th{cursor:pointer;user-select:none;background:#edf2f7}
th.asc::after{content:' \\25B2'}th.desc::after{content:' \\25BC'}
.summary{color:#2d3748}
";

const SCRIPT: &str = "
let sortCol=-1,sortDir=1;
function applySort(){const t=document.getElementById('vehicles');if(!t||sortCol<0)return;
const hs=t.tHead.rows[0].cells,text=hs[sortCol].dataset.type==='text';
for(const h of hs)h.className='';hs[sortCol].className=sortDir>0?'asc':'desc';
const rows=[...t.tBodies[0].rows];rows.sort((a,b)=>{const x=a.cells[sortCol],y=b.cells[sortCol];
const r=text?x.textContent.localeCompare(y.textContent):(parseFloat(x.dataset.v)-parseFloat(y.dataset.v));
return r*sortDir;});for(const r of rows)t.tBodies[0].appendChild(r);}
document.addEventListener('click',e=>{const h=e.target.closest('#vehicles th');if(!h)return;
const i=h.cellIndex;sortDir=(i===sortCol)?-sortDir:1;sortCol=i;applySort();});
let seen=null;
async function poll(){try{const s=await (await fetch('api/v1/status',{cache:'no-store'})).json();
const key=s.closed_rounds+'/'+s.rounds+'/'+s.phase+'/'+s.broker_connected;
if(seen!==null&&key!==seen){const html=await (await fetch('dashboard/live',{cache:'no-store'})).text();
document.getElementById('live').innerHTML=html;applySort();}
seen=key;document.getElementById('updated').textContent='updated '+new Date().toLocaleTimeString();}
catch(e){document.getElementById('updated').textContent='server unreachable; retrying';}}
setInterval(poll,2000);poll();
";

/// The whole dashboard page.
pub fn page(
    store: &Store,
    settings: &Settings,
    live: &LiveState,
    now_ms: u64,
) -> Result<String, StoreError> {
    let body = live_part(store, settings, live, now_ms)?;
    Ok(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>convoy: fleet {fleet}</title><style>{STYLE}</style></head><body>\
         <h1>convoy: fleet {fleet}</h1>\
         <p><a href=\"metrics\">/metrics</a> · <a href=\"api/v1/rounds\">/api/v1/rounds</a> · \
         <a href=\"api/v1/vehicles\">/api/v1/vehicles</a> · <a href=\"api/v1/models\">/api/v1/models</a> · \
         <span id=\"updated\"></span></p>\
         <div id=\"live\">{body}</div><script>{SCRIPT}</script></body></html>",
        fleet = esc(&settings.fleet),
    ))
}
