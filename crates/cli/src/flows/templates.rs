//! The ready templates of `flows/templates/`, built into the binary so `hlbridge demo`
//! works from any directory. The files in the repository are the source of truth.

/// One ready template.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    /// File name under `flows/templates/`.
    pub file: &'static str,
    /// The flow file's text.
    pub source: &'static str,
}

impl Template {
    /// The path shown in diagnostics (`flows/templates/<file>`).
    pub fn path(&self) -> String {
        format!("flows/templates/{}", self.file)
    }
}

macro_rules! template {
    ($file:literal) => {
        Template {
            file: $file,
            source: include_str!(concat!("../../../../flows/templates/", $file)),
        }
    };
}

/// Every ready template.
pub const TEMPLATES: &[Template] = &[
    template!("contact-lookup.toml"),
    template!("task-updates.toml"),
    template!("tag-segmentation.toml"),
    template!("contact-lifecycle.toml"),
    template!("task-reminders.toml"),
    template!("notes-to-app.toml"),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded list covers every flow file of `flows/templates/`.
    #[test]
    fn every_template_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../flows/templates");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("flows/templates")
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".toml") && !n.ends_with(".test.toml"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = TEMPLATES.iter().map(|t| t.file.to_owned()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }
}
