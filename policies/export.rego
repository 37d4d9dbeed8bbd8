# Export decisions: what may leave a bubble, after the automated checks have run.
#
# Entry point: data.bulles.export.decision, defined for every input: {action, reviewers,
# organisations, reasons}. File allow-list and size, check findings, the provenance of the
# bubble's data (each grant's sensitivity, access mode and publisher). Anything not clearly safe
# goes to human review; reviewers are never the requester (the controller enforces it, the
# reasons say it), and for the sensitivities listed in reviewers.export_provider the source's
# provider organisation must be among them (`organisations`).
#
# As in access.rego, the decision is a function, decide(input, reference data), which the tests
# call directly (regopy cannot run `with input as ...` tests on policies of this size), and
# comprehensions make their calls in the body, never in the head (a regopy bug).
package bulles.export

import rego.v1

default reference := {}

reference := data.bulles.reference

default given := null

given := input

default decision := {
	"action": "refuse",
	"reviewers": 0,
	"organisations": [],
	"reasons": ["policy_error: the export policy could not reach a decision; refused"],
}

decision := decide(given, reference)

sensitivities := ["open", "internal", "personal", "sensitive"]

personal_sensitivities := {"personal", "sensitive"}

severities := {"fail", "review", "pass"}

# ------------------------------------------------------------------ the decision

decide(x, ref) := {
	"action": action,
	"reviewers": pick(action == "review", reviewer_count(n, s, provenance), 0),
	"organisations": organisations,
	"reasons": [r[1] | some r in sort([e | some e in entries])],
} if {
	s := settings(ref)
	n := normalise(x)
	refusals := refusals_of(n, s)
	provenance := provenance_of(n, s)
	release_open := all_true([provenance.open_only, all_pass(n)])
	release_tables := all_true([provenance.no_row_level, all_pass(n), tables_checked(n, s)])
	action := action_of(count(refusals) > 0, release_open, release_tables)
	organisations := pick(action == "review", providers_of(n, s), [])
	entries := pick(action == "refuse", refusals, notes(n, s, provenance, action, release_open, organisations))
}

action_of(refuse, release_open, release_tables) := "refuse" if {
	refuse
} else := "release" if {
	release_open
} else := "release" if {
	release_tables
} else := "review"

# Provenance is known when the grants are a list of known sensitivities and every grant whose
# provider must review the export names that provider (a string `publisher`).
provenance_of(n, s) := {
	"known": known,
	"listed": listed,
	"open_only": all_true([known, every_grant_in(n.grants, {"open"})]),
	"no_row_level": all_true([known, count(row_level) == 0]),
	"row_level": row_level,
	"unpublished": unpublished,
} if {
	row_level := [name |
		some g in n.grants
		row_level_personal(g, s)
		name := grant_label(g)
	]
	unpublished := [name |
		some g in n.grants
		needs_provider(g, s)
		not text(g.publisher)
		name := grant_label(g)
	]
	listed := all_true([is_array(value_at(n.raw, "grants")), every_grant_in(n.grants, {x | some x in sensitivities})])
	known := all_true([listed, count(unpublished) == 0])
}

# Personal or sensitive data in a mode where rows still describe persons (anything but the
# continuum's summary modes, a missing or unknown mode included).
row_level_personal(g, s) if {
	is_object(g)
	g.sensitivity in personal_sensitivities
	not summary_mode(g, s)
}

summary_mode(g, s) if {
	is_string(g.mode)
	g.mode in s.summary_modes
}

# A grant whose provider organisation must be among the export's reviewers.
needs_provider(g, s) if {
	is_object(g)
	is_string(g.sensitivity)
	g.sensitivity in s.export_provider
}

# The provider organisations that must review, sorted, each once.
providers_of(n, s) := sort([o | some o in found]) if {
	found := {o |
		some g in n.grants
		needs_provider(g, s)
		text(g.publisher)
		o := g.publisher
	}
} else := []

grant_label(g) := concat("", [
	"'", as_text(object.get(g, "source", "(unnamed)")), "' (",
	as_text(g.sensitivity), ", ", mode_text(g), ")",
])

mode_text(g) := g.mode if {
	text(g.mode)
} else := "no mode"

every_grant_in(grants, allowed) := true if {
	every g in grants {
		is_object(g)
		g.sensitivity in allowed
	}
} else := false

all_pass(n) := true if {
	every f in n.findings {
		is_object(f)
		f.severity == "pass"
	}
} else := false

checked(n, path) if {
	some f in n.findings
	is_object(f)
	f.file == path
}

# Every file is a table and at least one check ran on it.
tables_checked(n, s) := true if {
	every f in n.files {
		lower(f.type) in s.table_types
		checked(n, f.path)
	}
} else := false

# Reviewers: the largest count among the grants' sensitivities; unknown provenance counts as
# sensitive. Not max(): regopy compares numbers as text there.
reviewer_count(n, s, provenance) := c if {
	needed := union({
		{c1 | some g in n.grants; is_object(g); c1 := s.reviewers[g.sensitivity]},
		{c2 | not provenance.known; c2 := s.reviewers.sensitive},
		{c3 | c3 := s.reviewers.open},
	})
	some c in needed
	every other in needed {
		c >= other
	}
} else := 1

# ------------------------------------------------------------------ reference data

settings(ref) := {
	"file_types": file_types,
	"table_types": table_types,
	"max_bytes": max_bytes,
	"reviewers": reviewers,
	"summary_modes": summary_modes,
	"export_provider": export_provider,
	"missing": [p[0] | some p in checks; p[1] == false],
} if {
	file_types := array_at(ref, ["exports", "file_types"])
	table_types := array_at(ref, ["exports", "table_types"])
	max_bytes := number_at(ref, ["exports", "max_file_bytes"])
	reviewers := object_at(ref, ["reviewers", "export"])
	summary_modes := array_at(ref, ["continuum", "summary_modes"])
	export_provider := array_at(ref, ["reviewers", "export_provider"])
	checks := [
		["exports.file_types", count(file_types) > 0],
		["exports.table_types", count(table_types) > 0],
		["exports.max_file_bytes", max_bytes != null],
		["reviewers.export", every_number(reviewers, sensitivities)],
		["continuum.summary_modes", count(summary_modes) > 0],
		["reviewers.export_provider", sensitivity_list(object.get(ref, ["reviewers", "export_provider"], null))],
	]
}

# A list (possibly empty) of known sensitivities.
sensitivity_list(x) := true if {
	is_array(x)
	every v in x {
		v in sensitivities
	}
} else := false

every_number(o, keys) := true if {
	every key in keys {
		is_number(o[key])
	}
} else := false

# ------------------------------------------------------------------ helpers

pick(condition, when_true, when_false) := when_true if {
	condition
} else := when_false

all_true(flags) := true if {
	every f in flags {
		f == true
	}
} else := false

array_at(x, path) := v if {
	v := object.get(x, path, null)
	is_array(v)
} else := []

object_at(x, path) := v if {
	v := object.get(x, path, null)
	is_object(v)
} else := {}

number_at(x, path) := v if {
	v := object.get(x, path, null)
	is_number(v)
} else := null

value_at(x, key) := v if {
	is_object(x)
	v := x[key]
} else := null

object_or_empty(x) := x if {
	is_object(x)
} else := {}

array_or_empty(x) := x if {
	is_array(x)
} else := []

text(x) if {
	is_string(x)
	trim_space(x) != ""
}

# Text assembled with concat, not sprintf: regopy's sprintf mangles string arguments that other
# builtins (concat, lower, sprintf...) produced.
msg(parts) := concat("", [as_text(p) | some p in parts])

as_text(p) := p if {
	is_string(p)
} else := sprintf("%v", [p])

# The extension of a path's last segment, lower case ("" when there is none).
extension(path) := lower(parts[count(parts) - 1]) if {
	segments := split(path, "/")
	parts := split(segments[count(segments) - 1], ".")
	count(parts) > 1
} else := ""

file_well_formed(f) if {
	is_object(f)
	text(f.path)
	is_string(f.type)
	is_number(f.size)
	f.size >= 0
}

finding_label(f) := msg(["'", f.file, "' (check ", f.check, ")"]) if {
	is_string(f.file)
	is_string(f.check)
} else := msg(["'", f.file, "'"]) if {
	is_string(f.file)
} else := "a finding without a file"

# ------------------------------------------------------------------ input, normalised

normalise(x) := {
	"raw": raw,
	"project": project,
	"project_id": object.get(project, "id", "(unnamed)"),
	"members": {m.username | some m in array_or_empty(value_at(project, "members")); is_object(m); is_string(m.username)},
	"files": array_or_empty(value_at(raw, "files")),
	"grants": array_or_empty(value_at(raw, "grants")),
	"findings": array_or_empty(value_at(raw, "findings")),
	"requester": value_at(raw, "requester"),
} if {
	raw := object_or_empty(x)
	project := object_or_empty(value_at(raw, "project"))
}

# ------------------------------------------------------------------ refusals

refusals_of(n, s) := union({
	{["00", t] |
		count(s.missing) > 0
		t := msg(["reference_data_missing: policies/data lacks ", concat(", ", s.missing), "; nothing is released until it is restored"])
	},
	{["01", "no_files: the export request holds no file"] | count(n.files) == 0},
	{["01", "invalid_input: 'files' must be a list of {path, type, size}"] |
		f := value_at(n.raw, "files")
		f != null
		not is_array(f)
	},
	{["01", "invalid_input: 'findings' must be a list"] |
		f := value_at(n.raw, "findings")
		f != null
		not is_array(f)
	},
	{["01", t] |
		some i
		f := n.files[i]
		not file_well_formed(f)
		t := msg(["invalid_file: file ", i, " needs a path, a type and a size in bytes"])
	},
	{["01", "invalid_project: no project in the input"] | not is_object(value_at(n.raw, "project"))},
	{["02", t] |
		is_object(value_at(n.raw, "project"))
		not n.requester in n.members
		t := msg(["not_a_member: '", n.requester, "' is not a member of project '", n.project_id, "'"])
	},
	{["02", t] |
		some f in n.files
		file_well_formed(f)
		not lower(f.type) in s.file_types
		t := msg(["file_type_not_allowed: '", f.path, "' is of type '", f.type, "'; allowed: ", concat(", ", s.file_types)])
	},
	{["02", t] |
		some f in n.files
		file_well_formed(f)
		lower(f.type) in s.file_types
		extension(f.path) != lower(f.type)
		t := msg(["file_type_mismatch: '", f.path, "' is declared '", f.type, "' but its name says otherwise"])
	},
	{["02", t] |
		some f in n.files
		file_well_formed(f)
		s.max_bytes != null
		f.size > s.max_bytes
		t := msg(["file_too_large: '", f.path, "' is ", f.size, " bytes; the limit is ", s.max_bytes])
	},
	{["02", t] |
		some f in n.findings
		is_object(f)
		f.severity == "fail"
		t := msg(["check_failed: ", finding_label(f), " failed"])
	},
})

# ------------------------------------------------------------------ reasons for release or review

notes(n, s, provenance, action, release_open, organisations) := union({
	{["10", "open_data_only: every source of the bubble is open data and no check found anything; released"] |
		action == "release"
		release_open
	},
	{["10", "tables_passed: every file is a table that passed every check, and no source gives row-level personal data; released"] |
		action == "release"
		not release_open
	},
	{["10", t] |
		action == "review"
		t := msg(["review_required: ", reviewer_count(n, s, provenance), " reviewer(s), never the requester, must approve"])
	},
	{["11", t] |
		action == "review"
		count(provenance.row_level) > 0
		t := concat("", ["personal_data_review: the bubble holds row-level personal data from ", concat(", ", provenance.row_level)])
	},
	{["11", "unknown_sources: the grants are missing or name an unknown sensitivity; treated as sensitive"] |
		action == "review"
		not provenance.listed
	},
	{["11", t] |
		action == "review"
		some name in provenance.unpublished
		t := concat("", ["unknown_sources: grant ", name, " names no publisher, whose organisation must review; treated as sensitive"])
	},
	{["11", t] |
		action == "review"
		some o in organisations
		t := concat("", ["provider_review: organisation '", o, "' must be among the reviewers"])
	},
	{["12", t] |
		action == "review"
		some f in n.findings
		is_object(f)
		f.severity == "review"
		t := msg(["check_needs_review: ", finding_label(f), " asks for review"])
	},
	{["12", t] |
		action == "review"
		some f in n.findings
		not object_severity_known(f)
		t := msg(["unknown_severity: ", finding_label(f), " has no severity among fail, review, pass"])
	},
	{["13", t] |
		action == "review"
		provenance.no_row_level
		not provenance.open_only
		some f in n.files
		not lower(f.type) in s.table_types
		t := msg(["not_a_table: '", f.path, "' is not a table; a reviewer must look at it"])
	},
	{["13", t] |
		action == "review"
		provenance.no_row_level
		not provenance.open_only
		some f in n.files
		lower(f.type) in s.table_types
		not checked(n, f.path)
		t := msg(["not_checked: no check ran on '", f.path, "'"])
	},
})

object_severity_known(f) if {
	is_object(f)
	f.severity in severities
}
