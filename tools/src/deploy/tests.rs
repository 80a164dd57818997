//! Deploy planning, quoting and ELF checks, without a board.

use super::inventory::*;
use super::plan::*;

#[test]
fn quoting_survives_quotes_and_spaces() {
    assert_eq!(sh_quote("a b"), "'a b'");
    assert_eq!(sh_quote("it's"), r"'it'\''s'");
}

#[test]
fn elf_machine_is_read_from_the_header() {
    let mut h = vec![0u8; 20];
    h[..4].copy_from_slice(b"\x7fELF");
    h[5] = 1;
    h[18] = 0xb7;
    assert_eq!(elf_arch(&h), Some("aarch64"));
    h[18] = 0x28;
    assert_eq!(elf_arch(&h), Some("armv7l"));
    assert_eq!(elf_arch(b"#!/bin/sh\nexit 1\n"), None);
}

#[test]
fn inventory_defaults_apply_and_errors_name_the_board() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("fleet.toml");
    std::fs::write(
        &inv,
        r#"
[defaults]
artifact = "agent"
config = "agent.toml"
unit = "convoy-agent.service"
port = 2222

[[board]]
name = "a"
host = "10.0.0.1"
client_id = "truck-1"

[[board]]
name = "b"
host = "10.0.0.2"
client_id = "truck-2"
port = 22
"#,
    )
    .unwrap();
    let boards = load_inventory(&inv).unwrap();
    assert_eq!(boards[0].port, 2222);
    assert_eq!(boards[1].port, 22);
    assert_eq!(boards[0].artifact, dir.path().join("agent"));
    std::fs::write(
        &inv,
        "[[board]]\nname = \"a\"\nhost = \"h\"\nclient_id = \"bad id\"\nartifact = \"x\"\nconfig = \"y\"\nunit = \"z\"\n",
    )
    .unwrap();
    let err = load_inventory(&inv).unwrap_err().to_string();
    assert!(
        err.contains("board \"a\"") && err.contains("client_id"),
        "{err}"
    );
}
