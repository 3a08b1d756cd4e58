//! Flows as the admin API and the UI see them: the engine's loaded flows (file-defined ones
//! included) with their TOML source. A flow created or changed through the API or the UI is
//! compiled like a file, installed in the engine, and written as a file in the server's
//! flows directory: over the file it was loaded from when that file is in the directory,
//! else as `<flows dir>/<id>.toml`. Nothing is ever written outside that directory; without
//! one, flows saved here live in the engine and the database only (download them to keep
//! them). So flows built in the UI and flow files are the same thing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hlbridge_engine::flow::{Flow, Trigger};
use hlbridge_engine::validate::compile_source;
use hlbridge_engine::{Diagnostic, Engine};
use parking_lot::Mutex;
use serde::Serialize;

/// Why a flow could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// It does not compile: every diagnostic.
    #[error("{} error(s) in the flow", .0.len())]
    Invalid(Vec<Diagnostic>),
    /// No such flow.
    #[error("unknown flow `{0}`")]
    NotFound(String),
    /// A flow with this id exists (create), or the id changed (update).
    #[error("{0}")]
    Conflict(String),
    /// The file or the store could not be written.
    #[error("{0}")]
    Storage(String),
}

/// Where a flow's definition lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FlowSource {
    /// The TOML text.
    pub toml: String,
    /// The file it is saved in (`None`: in memory only; download it to keep it).
    pub file: Option<String>,
}

/// The flows' sources and the directory new ones are written to.
#[derive(Debug, Default)]
pub struct FlowStore {
    dir: Option<PathBuf>,
    sources: Mutex<HashMap<String, FlowSource>>,
}

/// A flow definition as TOML (what "export" downloads for a flow with no file).
pub fn to_toml(flow: &Flow) -> Result<String, String> {
    toml::to_string_pretty(flow).map_err(|e| format!("cannot write the flow as TOML: {e}"))
}

/// Sets the top-level `enabled` key of a flow file's text, keeping everything else (comments
/// included) as written.
pub fn set_enabled_in_source(src: &str, enabled: bool) -> String {
    let line = format!("enabled = {enabled}");
    let mut out: Vec<String> = Vec::new();
    let mut in_top = true;
    let mut done = false;
    let mut id_line = None;
    for l in src.lines() {
        let t = l.trim_start();
        if t.starts_with('[') {
            in_top = false;
        }
        if in_top && !done {
            let key = t.split('=').next().unwrap_or_default().trim();
            if key == "enabled" {
                out.push(line.clone());
                done = true;
                continue;
            }
            if key == "id" && t.contains('=') {
                id_line = Some(out.len());
            }
        }
        out.push(l.to_owned());
    }
    if !done {
        let at = id_line.map_or(0, |i| i + 1);
        out.insert(at, line);
    }
    let mut s = out.join("\n");
    if src.ends_with('\n') {
        s.push('\n');
    }
    s
}

impl FlowStore {
    /// A store writing new flows to `dir` (`None`: kept in memory and the database only).
    pub fn new(dir: Option<PathBuf>) -> FlowStore {
        FlowStore {
            dir,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// Where new flows are written.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// A loaded flow's source: as saved through the server, else its file, else the
    /// definition written as TOML.
    pub fn source(&self, engine: &Engine, id: &str) -> Option<FlowSource> {
        if let Some(s) = self.sources.lock().get(id) {
            return Some(s.clone());
        }
        let flow = engine.flow(id)?;
        // The file's text, when it still defines this very flow (a name given to an
        // in-memory source is not a file).
        if let Some(file) = &flow.file
            && let Ok(toml) = std::fs::read_to_string(file)
            && toml::from_str::<Flow>(&toml).is_ok_and(|f| f == flow.flow)
        {
            return Some(FlowSource {
                toml,
                file: Some(file.clone()),
            });
        }
        Some(FlowSource {
            toml: to_toml(&flow.flow).unwrap_or_default(),
            file: flow.file.clone(),
        })
    }

    /// Compiles `toml` and, when it compiles, installs it and writes its file. `expect_id`:
    /// for an update, the id the flow must keep; for a create (`None`), the id must be new.
    pub async fn save(
        &self,
        engine: &Engine,
        toml: &str,
        expect_id: Option<&str>,
    ) -> Result<FlowSource, FlowError> {
        let name = expect_id.map_or_else(|| "flow.toml".to_owned(), |id| format!("{id}.toml"));
        let mut compiled = compile_source(&name, toml, &engine.validation_context())
            .map_err(FlowError::Invalid)?;
        let id = compiled.id().to_owned();
        let existing = engine.flow(&id);
        match expect_id {
            Some(want) if want != id => {
                return Err(FlowError::Conflict(format!(
                    "the flow's id is `{id}`, not `{want}`: a flow's id cannot change (create a new flow instead)"
                )));
            }
            Some(want) if engine.flow(want).is_none() => {
                return Err(FlowError::NotFound(want.to_owned()));
            }
            None if existing.is_some() => {
                return Err(FlowError::Conflict(format!(
                    "a flow with id `{id}` exists; choose another id or update that flow"
                )));
            }
            _ => {}
        }
        let current_file = self
            .sources
            .lock()
            .get(&id)
            .and_then(|s| s.file.clone())
            .or_else(|| existing.as_ref().and_then(|f| f.file.clone()));
        let file = self.dir.as_ref().map(|dir| {
            current_file
                .map(PathBuf::from)
                .filter(|f| inside(dir, f))
                .unwrap_or_else(|| dir.join(format!("{id}.toml")))
        });
        if let Some(path) = &file {
            write_atomically(path, toml)
                .map_err(|e| FlowError::Storage(format!("writing {}: {e}", path.display())))?;
        }
        let file = file.map(|p| p.display().to_string());
        compiled.file = file.clone();
        engine
            .add_flows(vec![compiled])
            .await
            .map_err(|e| FlowError::Storage(e.to_string()))?;
        let source = FlowSource {
            toml: toml.to_owned(),
            file,
        };
        self.sources.lock().insert(id, source.clone());
        Ok(source)
    }

    /// Enables or disables a flow (its `enabled` key, its file updated in place).
    pub async fn set_enabled(
        &self,
        engine: &Engine,
        id: &str,
        enabled: bool,
    ) -> Result<FlowSource, FlowError> {
        let source = self
            .source(engine, id)
            .ok_or_else(|| FlowError::NotFound(id.to_owned()))?;
        let toml = set_enabled_in_source(&source.toml, enabled);
        self.save(engine, &toml, Some(id)).await
    }
}

/// Whether `file` is in `dir` (both resolved; a file that does not exist is not).
fn inside(dir: &Path, file: &Path) -> bool {
    match (dir.canonicalize(), file.canonicalize()) {
        (Ok(d), Ok(f)) => f.starts_with(d),
        _ => false,
    }
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("toml.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The trigger of a flow, for people.
pub fn trigger_text(flow: &Flow) -> String {
    match &flow.trigger {
        Trigger::HighlevelPoll(p) => {
            format!("poll {} every {} min", p.operation, p.interval_minutes)
        }
        Trigger::HighlevelWebhook(w) => format!("HighLevel webhook {}", w.events.join(", ")),
        Trigger::AppWebhook(_) => format!("app webhook POST /hooks/app/{}", flow.id),
        Trigger::Schedule(s) => format!("schedule {}", s.cron),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enabled_is_set_in_place() {
        let src = "# a comment\nid = \"x\"\nname = \"X\"\n\n[trigger]\ntype = \"schedule\"\ncron = \"@hourly\"\nenabled = true\n";
        let off = set_enabled_in_source(src, false);
        assert!(off.starts_with("# a comment\nid = \"x\"\nenabled = false\nname"));
        assert!(off.ends_with("enabled = true\n"), "nested keys untouched");
        let on = set_enabled_in_source(&off, true);
        assert!(on.contains("\nenabled = true\nname"));
        assert_eq!(on.matches("enabled = ").count(), 2);
    }

    #[test]
    fn flows_round_trip_through_toml() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../flows/templates");
        for entry in std::fs::read_dir(dir).expect("templates") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let src = std::fs::read_to_string(&path).expect("read");
            let flow: Flow = toml::from_str(&src).expect("parses");
            let text = to_toml(&flow).expect("writes");
            let back: Flow = toml::from_str(&text).unwrap_or_else(|e| panic!("{text}\n{e}"));
            assert_eq!(back, flow, "{}", path.display());
        }
    }
}
