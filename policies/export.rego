# Export decisions: what may leave a bubble, after the automated checks have run.
#
# Entry point: data.bulles.export.decision, defined for every input. First version: file
# allow-list and size, check findings, the provenance of the bubble's data. Anything not
# clearly safe goes to human review; reviewers are never the requester (the controller enforces
# it, the reasons say it).
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
	"reasons": ["policy_error: the export policy could not reach a decision; refused"],
}

decision := decide(given, reference)

sensitivities := ["open", "internal", "personal", "sensitive"]

severities := {"fail", "review", "pass"}

# ------------------------------------------------------------------ the decision

decide(x, ref) := {
	"action": action,
	"reviewers": pick(action == "review", reviewer_count(n, s, provenance), 0),
	"reasons": [r[1] | some r in sort([e | some e in entries])],
} if {
	s := settings(ref)
	n := normalise(x)
	refusals := refusals_of(n, s)
	provenance := provenance_of(n)
	release_open := all_true([provenance.open_only, all_pass(n)])
	release_tables := all_true([provenance.non_personal, all_pass(n), tables_checked(n, s)])
	action := action_of(count(refusals) > 0, release_open, release_tables)
	entries := pick(action == "refuse", refusals, notes(n, s, provenance, action, release_open))
}

action_of(refuse, release_open, release_tables) := "refuse" if {
	refuse
} else := "release" if {
	release_open
} else := "release" if {
	release_tables
} else := "review"

provenance_of(n) := {
	"known": known,
	"open_only": all_true([known, every_grant_in(n.grants, {"open"})]),
	"non_personal": all_true([known, every_grant_in(n.grants, {"open", "internal"})]),
	"personal": [name |
		some g in n.grants
		is_object(g)
		g.sensitivity in {"personal", "sensitive"}
		name := concat("", ["'", as_text(g.source), "' (", g.sensitivity, ")"])
	],
} if {
	known := all_true([is_array(value_at(n.raw, "grants")), every_grant_in(n.grants, {s | some s in sensitivities})])
}

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
	"missing": [p[0] | some p in checks; p[1] == false],
} if {
	file_types := array_at(ref, ["exports", "file_types"])
	table_types := array_at(ref, ["exports", "table_types"])
	max_bytes := number_at(ref, ["exports", "max_file_bytes"])
	reviewers := object_at(ref, ["reviewers", "export"])
	checks := [
		["exports.file_types", count(file_types) > 0],
		["exports.table_types", count(table_types) > 0],
		["exports.max_file_bytes", max_bytes != null],
		["reviewers.export", every_number(reviewers, sensitivities)],
	]
}

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

notes(n, s, provenance, action, release_open) := union({
	{["10", "open_data_only: every source of the bubble is open data and no check found anything; released"] |
		action == "release"
		release_open
	},
	{["10", "tables_passed: every file is a table that passed every check, and no source holds personal data; released"] |
		action == "release"
		not release_open
	},
	{["10", t] |
		action == "review"
		t := msg(["review_required: ", reviewer_count(n, s, provenance), " reviewer(s), never the requester, must approve"])
	},
	{["11", t] |
		action == "review"
		count(provenance.personal) > 0
		t := concat("", ["personal_data_review: the bubble holds data from ", concat(", ", provenance.personal)])
	},
	{["11", "unknown_sources: the grants are missing or name an unknown sensitivity; treated as sensitive"] |
		action == "review"
		not provenance.known
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
		provenance.non_personal
		not provenance.open_only
		some f in n.files
		not lower(f.type) in s.table_types
		t := msg(["not_a_table: '", f.path, "' is not a table; a reviewer must look at it"])
	},
	{["13", t] |
		action == "review"
		provenance.non_personal
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
