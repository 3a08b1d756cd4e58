//! The templates gallery: the six ready flows of `flows/templates/` (built into the binary),
//! each with its behaviour test, whose first event is the template's sample event.

use hlbridge_engine::flow::Flow;
use serde::Serialize;
use serde_json::Value;

/// One ready template.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    /// Template id (the flow id it creates by default).
    pub id: &'static str,
    /// The pattern, for people.
    pub pattern: &'static str,
    /// The flow file's text.
    pub source: &'static str,
    /// Its behaviour test file's text.
    pub test: &'static str,
}

macro_rules! template {
    ($id:literal, $pattern:literal) => {
        Template {
            id: $id,
            pattern: $pattern,
            source: include_str!(concat!("../../../flows/templates/", $id, ".toml")),
            test: include_str!(concat!(
                "../../../flows/templates/tests/",
                $id,
                ".test.toml"
            )),
        }
    };
}

/// The six templates, in the order of the source document's patterns.
pub const TEMPLATES: &[Template] = &[
    template!("contact-lookup", "Contact lookup"),
    template!("task-updates", "Task-driven updates"),
    template!("tag-segmentation", "Tag-based segmentation"),
    template!("contact-lifecycle", "Contact lifecycle refresh"),
    template!("task-reminders", "Task reminders"),
    template!("notes-to-app", "Notes to the app"),
];

/// A template as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TemplateInfo {
    /// Template id.
    pub id: String,
    /// The pattern it implements.
    pub pattern: String,
    /// The flow's name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Its trigger type (`app_webhook`, `highlevel_webhook`, …).
    pub trigger: String,
    /// Its steps' types and operations.
    pub steps: Vec<String>,
    /// The flow file.
    pub toml: String,
    /// A sample event (from its behaviour test).
    #[schema(value_type = Object)]
    pub sample_event: Value,
}

/// A template by id.
pub fn find(id: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.id == id)
}

impl Template {
    /// The parsed flow.
    pub fn flow(&self) -> Option<Flow> {
        toml::from_str(self.source).ok()
    }

    /// The first event of the behaviour test (`{}` when it has none).
    pub fn sample_event(&self) -> Value {
        sample_from_test(self.test).unwrap_or_else(|| Value::Object(Default::default()))
    }

    /// What the gallery lists.
    pub fn info(&self) -> TemplateInfo {
        let flow = self.flow();
        TemplateInfo {
            id: self.id.to_owned(),
            pattern: self.pattern.to_owned(),
            name: flow
                .as_ref()
                .and_then(|f| f.name.clone())
                .unwrap_or_else(|| self.id.to_owned()),
            description: flow
                .as_ref()
                .and_then(|f| f.description.clone())
                .unwrap_or_default(),
            trigger: flow
                .as_ref()
                .map(|f| f.trigger.kind().to_owned())
                .unwrap_or_default(),
            steps: flow
                .as_ref()
                .map(|f| crate::catalog::step_summaries(&f.steps))
                .unwrap_or_default(),
            toml: self.source.to_owned(),
            sample_event: self.sample_event(),
        }
    }

    /// The template's source with another flow id (and name).
    pub fn instantiate(&self, id: &str, name: Option<&str>) -> Result<String, String> {
        let mut flow = self
            .flow()
            .ok_or_else(|| format!("template {} does not parse", self.id))?;
        if id == self.id && name.is_none() {
            return Ok(self.source.to_owned());
        }
        flow.id = id.to_owned();
        if let Some(n) = name {
            flow.name = Some(n.to_owned());
        }
        crate::flowstore::to_toml(&flow)
    }
}

/// The first event of the first case of a behaviour test file that has one.
pub fn sample_from_test(test: &str) -> Option<Value> {
    let v: toml::Value = toml::from_str(test).ok()?;
    let json = serde_json::to_value(v).ok()?;
    json.get("cases")?
        .as_array()?
        .iter()
        .find_map(|c| c.get("events")?.as_array()?.first().cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_file_is_in_the_gallery() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../flows/templates");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("flows/templates")
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".toml").map(str::to_owned))
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = TEMPLATES.iter().map(|t| t.id.to_owned()).collect();
        listed.sort();
        assert_eq!(on_disk, listed);
        for t in TEMPLATES {
            let info = t.info();
            assert_eq!(info.id, t.id);
            assert!(
                !info.steps.is_empty() && !info.trigger.is_empty(),
                "{}",
                t.id
            );
        }
        let tag = find("tag-segmentation").expect("tag template");
        assert_eq!(tag.sample_event()["type"], "tag.added");
        let copy = tag
            .instantiate("tags-2", Some("Tags"))
            .expect("instantiate");
        assert!(copy.contains("id = \"tags-2\""), "{copy}");
    }
}
