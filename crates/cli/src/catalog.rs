//! `hlbridge catalog`: the operation table as a terminal table or JSON.

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use hlbridge_highlevel::operations::{Category, Kind, OPERATIONS, Operation};
use serde_json::json;

/// Options of `hlbridge catalog`.
#[derive(Args, Debug)]
pub struct CatalogArgs {
    /// Only this category (slug such as `contacts` or its name such as "Calendars & Appointments").
    #[arg(long)]
    category: Option<String>,
    /// Only triggers or only actions.
    #[arg(long, value_enum)]
    kind: Option<KindArg>,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum KindArg {
    Trigger,
    Action,
}

fn selected(args: &CatalogArgs) -> Result<Vec<&'static Operation>> {
    let category = match &args.category {
        None => None,
        Some(c) => match Category::parse(c) {
            Some(cat) => Some(cat),
            None => {
                let known: Vec<_> = Category::ALL.iter().map(|c| c.slug()).collect();
                bail!("unknown category '{c}'; known: {}", known.join(", "));
            }
        },
    };
    let kind = args.kind.map(|k| match k {
        KindArg::Trigger => Kind::Trigger,
        KindArg::Action => Kind::Action,
    });
    Ok(OPERATIONS
        .iter()
        .filter(|op| category.is_none_or(|c| op.category == c))
        .filter(|op| kind.is_none_or(|k| op.kind == k))
        .collect())
}

/// The JSON form of one operation, as `--json` prints it.
pub fn operation_json(op: &Operation) -> serde_json::Value {
    json!({
        "id": op.id,
        "category": op.category.slug(),
        "category_name": op.category.label(),
        "kind": op.kind.as_str(),
        "name": op.name,
        "description": op.description,
        "method": op.method.as_str(),
        "path": op.path,
        "scope": op.scope,
        "version": op.version_header(),
        "token": op.token,
        "pagination": op.pagination.map(|p| p.as_str()),
        "params": op.params,
        "deprecated": op.deprecated,
    })
}

/// Runs `hlbridge catalog`.
pub fn run(args: CatalogArgs) -> Result<()> {
    let ops = selected(&args)?;
    if args.json {
        let all: Vec<_> = ops.iter().map(|op| operation_json(op)).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    let mut table = Table::new();
    table
        .load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(["id", "kind", "method", "path", "scope", "name"]);
    for op in &ops {
        table.add_row([
            op.id,
            op.kind.as_str(),
            op.method.as_str(),
            op.path,
            op.scope,
            op.name,
        ]);
    }
    println!("{table}");
    let triggers = ops.iter().filter(|o| o.kind == Kind::Trigger).count();
    println!(
        "{} operations ({} triggers, {} actions)",
        ops.len(),
        triggers,
        ops.len() - triggers
    );
    Ok(())
}
