//! Drawing one frame of `heartalk top` from the model: the fleet lines,
//! the worker table (columns chosen by [`model::fit_columns`]), the
//! selected worker's details, the log tail and a key line. Plain ASCII
//! text in plain box-drawing borders, no mouse, nothing wraps: it reads
//! the same over SSH in an 80×24 terminal.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Cell, HighlightSpacing, Paragraph, Row as TableRow, Table, TableState,
};
use shared::control::Status;

use super::model::{self, Col, Model, Row};
use crate::status::{bytes, duration};

/// The log pane's content.
#[derive(Debug, Clone, PartialEq)]
pub enum LogPane {
    /// Compact lines, oldest first.
    Lines(Vec<String>),
    /// Why there are none (no config to find the file in, unreadable).
    Unavailable(String),
}

/// What a frame shows besides the model.
pub struct Extras<'a> {
    pub selected: Option<usize>,
    pub log: &'a LogPane,
    /// The supervisor stopped answering: why, shown in place of the keys.
    pub problem: Option<&'a str>,
}

/// The selection mark before the selected row.
const MARK: &str = "> ";
/// Rows of the details pane, borders included.
const DETAILS: u16 = 4;
/// The fewest rows the log pane is given, borders included.
const MIN_LOG: u16 = 3;

pub fn draw(frame: &mut Frame, model: &Model, extras: &Extras) {
    let area = frame.area();
    let head = model
        .status
        .as_ref()
        .map_or_else(Vec::new, |s| fleet_lines(s, model));
    let head_h = head.len() as u16;
    let room = area
        .height
        .saturating_sub(head_h + DETAILS + MIN_LOG + 1)
        .max(4);
    let table_h = (model.rows.len() as u16 + 3).min(room);
    let [head_area, table_area, details_area, log_area, keys_area] = Layout::vertical([
        Constraint::Length(head_h),
        Constraint::Length(table_h),
        Constraint::Length(DETAILS),
        Constraint::Min(MIN_LOG),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(head), head_area);
    workers(frame, table_area, &model.rows, extras.selected);
    let chosen = extras.selected.and_then(|i| model.rows.get(i));
    frame.render_widget(details(chosen), details_area);
    frame.render_widget(log(extras.log, log_area), log_area);
    let keys = match extras.problem {
        Some(why) => Line::styled(
            format!("retrying every second: {why}"),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
        None => Line::styled(
            "q quit  Up/Down (k/j) select  refreshed every second",
            Style::new().add_modifier(Modifier::DIM),
        ),
    };
    frame.render_widget(Paragraph::new(keys), keys_area);
}

/// The supervisor's line, the fleet's totals, and the scaled apps if any.
fn fleet_lines(s: &Status, model: &Model) -> Vec<Line<'static>> {
    let sup = &s.supervisor;
    let reload = match (&sup.reload.last, sup.reload.in_progress) {
        (_, true) => "in progress".to_string(),
        (Some(r), false) => format!("gen {} {}", r.generation, r.outcome.replace('_', " ")),
        (None, false) => "none yet".to_string(),
    };
    let t = model::totals(&model.rows);
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    let mut lines = vec![
        Line::from(format!(
            "heartalk {}  pid {}  up {}  {}  gen {}  last reload: {}",
            sup.version,
            sup.pid,
            duration(sup.uptime_secs),
            sup.state,
            sup.generation,
            reload
        )),
        Line::from(format!(
            "workers {}/{} online  cpu {:.1}%  mem {}  req/s {}  conns {}",
            t.online,
            t.workers,
            t.cpu_percent,
            bytes(t.memory),
            or_dash(t.req_rate.map(|r| format!("{r:.1}"))),
            or_dash(t.connections.map(|c| c.to_string())),
        ))
        .style(Style::new().add_modifier(Modifier::BOLD)),
    ];
    let scaled: Vec<String> = s
        .apps
        .iter()
        .filter_map(|a| {
            let n = a.scaled.as_ref()?;
            Some(format!("{} to {n} (file {})", a.name, a.instances))
        })
        .collect();
    if !scaled.is_empty() {
        lines.push(Line::from(format!("scaled: {}", scaled.join(", "))));
    }
    lines
}

fn workers(frame: &mut Frame, area: Rect, rows: &[Row], selected: Option<usize>) {
    let app_slot = model::app_slot_width(rows);
    let inner = area.width.saturating_sub(2 + MARK.len() as u16);
    let cols = model::fit_columns(inner, app_slot);
    let header = TableRow::new(cols.iter().map(|c| Cell::from(c.header())))
        .style(Style::new().add_modifier(Modifier::BOLD));
    let body = rows.iter().map(|r| {
        TableRow::new(cols.iter().map(|c| {
            let text = cell(*c, r);
            match c {
                Col::State => Cell::from(text).style(state_style(&r.worker.state)),
                _ => Cell::from(text),
            }
        }))
    });
    let widths = cols.iter().map(|c| Constraint::Length(c.width(app_slot)));
    let table = Table::new(body, widths)
        .header(header)
        .column_spacing(model::GAP)
        .block(Block::bordered().title(" workers "))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol(MARK)
        .highlight_spacing(HighlightSpacing::Always);
    let mut state = TableState::default().with_selected(selected);
    frame.render_stateful_widget(table, area, &mut state);
}

/// One cell's text.
fn cell(col: Col, r: &Row) -> String {
    let w = &r.worker;
    let dash = || "-".to_string();
    match col {
        Col::Pid => w.pid.map_or_else(dash, |p| p.to_string()),
        Col::AppSlot => r.name(),
        Col::State => w.state.clone(),
        Col::Cpu => w.cpu_percent.map_or_else(dash, |c| format!("{c:.1}%")),
        Col::Rss => w.rss_bytes.map_or_else(dash, bytes),
        Col::Pss => w.pss_bytes.map_or_else(dash, bytes),
        Col::ReqRate => r.req_rate.map_or_else(dash, |x| format!("{x:.1}")),
        Col::Conns => w.connections.map_or_else(dash, |c| c.to_string()),
        Col::Restarts => w.restarts.to_string(),
        Col::Ping => w
            .watchdog_ping_age_secs
            .map_or_else(dash, |a| format!("{a:.1}s")),
        Col::Uptime => w.uptime_secs.map_or_else(dash, duration),
        Col::Gen => w.generation.map_or_else(dash, |g| g.to_string()),
        Col::LastExit => last_exit(r),
    }
}

fn last_exit(r: &Row) -> String {
    match &r.worker.last_exit {
        None => "-".to_string(),
        Some(e) => match (&e.signal, e.code) {
            (Some(sig), _) => format!("{} ({sig})", e.reason),
            (None, Some(c)) => format!("{} ({c})", e.reason),
            (None, None) => e.reason.clone(),
        },
    }
}

fn state_style(state: &str) -> Style {
    match state {
        "online" => Style::new().fg(Color::Green),
        "starting" | "stopping" => Style::new().fg(Color::Cyan),
        "degraded" | "hung" => Style::new().fg(Color::Yellow),
        "errored" => Style::new().fg(Color::Red),
        _ => Style::new().add_modifier(Modifier::DIM),
    }
}

/// The selected worker's facts that the table has no room for.
fn details(row: Option<&Row>) -> Paragraph<'static> {
    let Some(r) = row else {
        return Paragraph::new("no worker").block(Block::bordered().title(" worker "));
    };
    let w = &r.worker;
    let dash = || "-".to_string();
    let first = format!(
        "pid {}  app {}  slot {}  gen {}  up {}  listen {}",
        w.pid.map_or_else(dash, |p| p.to_string()),
        r.app,
        w.slot,
        w.generation.map_or_else(dash, |g| g.to_string()),
        w.uptime_secs.map_or_else(dash, duration),
        r.listen
    );
    let second = Line::from(vec![
        Span::raw("state "),
        Span::styled(w.state.clone(), state_style(&w.state)),
        Span::raw(format!(
            "  restarts {} ({} unstable)  last exit {}",
            w.restarts,
            w.unstable_restarts,
            last_exit(r)
        )),
    ]);
    Paragraph::new(vec![Line::from(first), second])
        .block(Block::bordered().title(format!(" worker {} ", r.name())))
}

/// The last lines of the log that fit in `area`.
fn log(pane: &LogPane, area: Rect) -> Paragraph<'static> {
    let block = Block::bordered().title(" fleet log ");
    let fit = area.height.saturating_sub(2) as usize;
    match pane {
        LogPane::Lines(lines) => {
            let shown = &lines[lines.len().saturating_sub(fit)..];
            Paragraph::new(
                shown
                    .iter()
                    .map(|l| Line::from(l.clone()))
                    .collect::<Vec<_>>(),
            )
            .block(block)
        }
        LogPane::Unavailable(why) => Paragraph::new(Line::styled(
            why.clone(),
            Style::new().add_modifier(Modifier::DIM),
        ))
        .block(block),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::fixtures::{self, worker};
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn status(pids: &[u32]) -> Status {
        let workers = pids.iter().enumerate();
        let mut s = fixtures::status(workers.map(|(slot, &pid)| worker(slot, pid, 10)).collect());
        s.apps[0].scaled = Some("3".into());
        s
    }

    fn screen(width: u16, height: u16, model: &Model, extras: &Extras) -> Vec<String> {
        let mut term = Terminal::new(TestBackend::new(width, height)).unwrap();
        term.draw(|f| draw(f, model, extras)).unwrap();
        let buf = term.backend().buffer();
        (0..height)
            .map(|y| (0..width).map(|x| buf[(x, y)].symbol()).collect())
            .collect()
    }

    #[test]
    fn an_80_by_24_screen_shows_the_fleet_the_workers_and_the_log() {
        let mut model = Model::default();
        model.update(status(&[101, 102, 103]), Instant::now());
        let log = LogPane::Lines(
            (0..40)
                .map(|i| format!("12:00:{i:02} heartalk event {i}"))
                .collect(),
        );
        let extras = Extras {
            selected: Some(1),
            log: &log,
            problem: None,
        };
        let lines = screen(80, 24, &model, &extras);
        let text = lines.join("\n");
        assert!(
            lines[0].starts_with("heartalk 0.1.0  pid 1  up 9s  running  gen 1"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("workers 3/3 online  cpu 4.5%  mem 60.0 MB  req/s -  conns 6"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("scaled: heartalk to 3 (file 2)"),
            "{text}"
        );
        // The table: a header, three rows, the second marked; no PSS at 80.
        let header = lines.iter().find(|l| l.contains("APP/SLOT")).unwrap();
        assert!(
            header.contains("REQ/S") && header.contains("PING") && !header.contains("PSS"),
            "{text}"
        );
        assert!(text.contains("> 102"), "{text}");
        // The details of the selected one, and the newest log lines.
        assert!(
            text.contains("pid 102  app heartalk  slot 1  gen 1  up 5s"),
            "{text}"
        );
        assert!(
            text.contains("event 39") && !text.contains("event 20 "),
            "{text}"
        );
        assert!(lines[23].starts_with("q quit"), "{text}");
    }

    #[test]
    fn a_lost_supervisor_is_said_on_the_key_line() {
        let model = Model::default();
        let log = LogPane::Unavailable("no log".into());
        let extras = Extras {
            selected: None,
            log: &log,
            problem: Some("no supervisor answers"),
        };
        let lines = screen(80, 24, &model, &extras);
        assert!(
            lines[23].starts_with("retrying every second: no supervisor answers"),
            "{lines:?}"
        );
        assert!(lines.join("\n").contains("no worker"));
    }
}
