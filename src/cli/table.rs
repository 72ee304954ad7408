//! Aligned text tables for the commands that list things (`dlq list`, `ledger search`).

/// The widest a column other than the last gets; longer values are cut with `…`.
const CELL_WIDTH: usize = 48;

/// A header row and one aligned row per item. Control characters are replaced; every cell but
/// the last (a detail) is cut to [`CELL_WIDTH`].
pub fn table<const N: usize>(
    columns: [&str; N],
    rows: impl IntoIterator<Item = [String; N]>,
) -> String {
    let rows: Vec<[String; N]> = rows
        .into_iter()
        .map(|row| {
            let mut row = row.map(|c| printable(&c));
            for cell in row.iter_mut().take(N.saturating_sub(1)) {
                *cell = cut(cell, CELL_WIDTH);
            }
            row
        })
        .collect();
    let mut widths = columns.map(|c| c.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&columns.map(str::to_owned));
    for row in &rows {
        line(row);
    }
    out
}

/// Text safe to print on a terminal: control characters (a publisher's headers may hold
/// escape sequences or newlines) become `?`.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut out: String = text.chars().take(width - 1).collect();
        out.push('…');
        out
    }
}
