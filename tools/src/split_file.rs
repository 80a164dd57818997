//! A split made by another tool: one client id per training row, from a
//! NumPy `.npy` file (1-D, integer: `u1`, `u2`, `u4`, `u8`, `i1`, `i2`,
//! `i4`, `i8`, either byte order) or a one-column CSV (an optional header,
//! then one id per line). With Flower Datasets' splits in such a file a
//! convoy run trains exactly the clients a Flower run did.

use anyhow::{Context, bail, ensure};
use std::path::Path;

/// Largest client id accepted: a split of more clients is surely a wrong column.
pub const MAX_CLIENTS: usize = 100_000;

/// Row indices per client (client id = position), from the file at
/// `path`, which must name one client for each of `rows` rows.
pub fn read(path: &Path, rows: usize) -> anyhow::Result<Vec<Vec<usize>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let ids = if bytes.starts_with(b"\x93NUMPY") {
        npy(&bytes).with_context(|| format!("{} is not a usable .npy split", path.display()))?
    } else {
        csv(&bytes).with_context(|| format!("{} is not a usable CSV split", path.display()))?
    };
    ensure!(
        ids.len() == rows,
        "{} names a client for {} rows, but the training set has {rows}",
        path.display(),
        ids.len()
    );
    let clients = ids.iter().max().map_or(0, |m| m + 1);
    let mut parts = vec![Vec::new(); clients];
    for (row, id) in ids.into_iter().enumerate() {
        parts[id].push(row);
    }
    Ok(parts)
}

fn check_id(v: i128) -> anyhow::Result<usize> {
    ensure!(
        (0..MAX_CLIENTS as i128).contains(&v),
        "client id {v} is outside 0..{MAX_CLIENTS}"
    );
    Ok(v as usize)
}

fn npy(bytes: &[u8]) -> anyhow::Result<Vec<usize>> {
    ensure!(bytes.len() >= 10, "truncated header");
    let (major, header_start) = (bytes[6], 8);
    let (header_len, data_start) = match major {
        1 => {
            let n = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            (n, header_start + 2 + n)
        }
        2 | 3 => {
            ensure!(bytes.len() >= 12, "truncated header");
            let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
            (n, header_start + 4 + n)
        }
        v => bail!("format version {v} is not one this reader knows (1, 2, 3)"),
    };
    ensure!(
        data_start <= bytes.len(),
        "truncated header ({header_len} bytes)"
    );
    let header = std::str::from_utf8(&bytes[data_start - header_len..data_start])
        .context("header is not text")?;
    let field = |key: &str| -> anyhow::Result<&str> {
        let at = header
            .find(&format!("'{key}'"))
            .with_context(|| format!("header has no '{key}': {header}"))?;
        let rest = header[at + key.len() + 2..].trim_start();
        Ok(rest.strip_prefix(':').unwrap_or(rest).trim_start())
    };
    ensure!(
        field("fortran_order")?.starts_with("False"),
        "Fortran-ordered arrays are not supported"
    );
    let shape = field("shape")?;
    let shape = &shape[..shape.find(')').context("unterminated shape")? + 1];
    let dims: Vec<&str> = shape
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    ensure!(dims.len() == 1, "expected a 1-D array, found shape {shape}");
    let count: usize = dims[0].parse().context("bad shape")?;
    let descr = field("descr")?;
    let descr = descr
        .trim_start_matches(['\'', '"'])
        .split(['\'', '"'])
        .next()
        .unwrap_or_default();
    let (order, kind) = descr.split_at(1.min(descr.len()));
    let big = order == ">";
    ensure!(
        matches!(order, "<" | ">" | "|" | "="),
        "unknown dtype {descr:?}"
    );
    let width: usize = kind.get(1..).unwrap_or("").parse().unwrap_or(0);
    let signed = kind.starts_with('i');
    ensure!(
        (kind.starts_with('u') || signed) && matches!(width, 1 | 2 | 4 | 8),
        "dtype {descr:?} is not an integer type (use uint8, uint16 or int64)"
    );
    let data = &bytes[data_start..];
    ensure!(
        data.len() == count * width,
        "{count} values of {width} bytes need {} bytes, the file has {}",
        count * width,
        data.len()
    );
    data.chunks_exact(width)
        .map(|c| {
            let mut b = [0u8; 8];
            if big {
                b[8 - width..].copy_from_slice(c);
                b.reverse();
            } else {
                b[..width].copy_from_slice(c);
            }
            let raw = u64::from_le_bytes(b);
            let v = if signed {
                let shift = 64 - 8 * width as u32;
                (((raw << shift) as i64) >> shift) as i128
            } else {
                raw as i128
            };
            check_id(v)
        })
        .collect()
}

fn csv(bytes: &[u8]) -> anyhow::Result<Vec<usize>> {
    let text = std::str::from_utf8(bytes).context("not UTF-8 text")?;
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let cell = line.trim().trim_matches('"');
        if cell.is_empty() {
            continue;
        }
        ensure!(
            !cell.contains(','),
            "line {}: expected one column, found {line:?}",
            n + 1
        );
        match cell.parse::<i128>() {
            Ok(v) => ids.push(check_id(v).with_context(|| format!("line {}", n + 1))?),
            // a header line
            Err(_) if n == 0 => {}
            Err(_) => bail!("line {}: {cell:?} is not a client id", n + 1),
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy_file(descr: &str, data: &[u8], count: usize) -> Vec<u8> {
        let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({count},), }}");
        let mut header = dict.into_bytes();
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(b' ');
        }
        header.push(b'\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out
    }

    fn write(bytes: &[u8], name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("convoy-split-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn npy_and_csv_splits_read_the_same() {
        let u1 = write(&npy_file("|u1", &[1, 0, 2, 1], 4), "a.npy");
        let i8: Vec<u8> = [1i64, 0, 2, 1]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let i8 = write(&npy_file("<i8", &i8, 4), "b.npy");
        let u2: Vec<u8> = [1u16, 0, 2, 1]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let u2 = write(&npy_file(">u2", &u2, 4), "c.npy");
        let csv = write(b"client\n1\n0\n2\n1\n", "d.csv");
        let want = vec![vec![1], vec![0, 3], vec![2]];
        for path in [u1, i8, u2, csv] {
            assert_eq!(read(&path, 4).unwrap(), want, "{}", path.display());
        }
    }

    #[test]
    fn bad_splits_are_explained() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (npy_file("|u1", &[1, 0, 2], 4), "need 4 bytes"),
            (npy_file("<f4", &[0; 16], 4), "not an integer"),
            (npy_file("|u1", &[1, 0, 2, 1, 1], 5), "training set has 4"),
            (
                npy_file("<i2", &[0xff, 0xff, 0, 0, 0, 0, 0, 0], 4),
                "outside",
            ),
            (b"\x93NUMPY\x01".to_vec(), "truncated"),
            (b"1\n0\nx\n1\n".to_vec(), "not a client id"),
            (b"1,2\n0\n1\n1\n".to_vec(), "one column"),
        ];
        for (i, (bytes, want)) in cases.into_iter().enumerate() {
            let path = write(&bytes, &format!("bad{i}"));
            let e = format!("{:#}", read(&path, 4).unwrap_err());
            assert!(e.contains(want), "case {i}: {e}");
        }
    }

    #[test]
    fn flowers_splits_read() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/partitions");
        let path = dir.join("fmnist_dir0.1_c20_s42.npy");
        assert!(
            path.exists(),
            "{} is missing: ../shared/data sits beside the project",
            path.display()
        );
        let parts = read(&path, 60_000).unwrap();
        assert_eq!(parts.len(), 20);
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 60_000);
    }
}
