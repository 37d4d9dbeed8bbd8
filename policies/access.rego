# Access decisions: which form of a source a project may see, on what terms, until when.
#
# Entry point: data.bulles.access.decision, defined for every input (garbage is denied with a
# reason, never left undefined). The default policy is tabulated in policies/README.md.
#
# "Aussi ouvert que possible, aussi fermé que nécessaire": the policy first fixes the most open
# mode the case allows (the base), then walks the continuum toward closed until it meets a mode
# the provider allows. A request for a more closed mode is honoured when the provider allows it;
# a request for a more open one is answered with the allowed mode and a reason.
#
# The decision is a function, decide(input, reference data), so that tests call it with many
# inputs in one query: regopy 1.5.2 cannot run `with input as ...` tests on policies of this
# size (it crashes, or needs gigabytes per query).
package bulles.access

import rego.v1

default reference := {}

reference := data.bulles.reference

default given := null

given := input

default decision := {
	"status": "denied",
	"mode": null,
	"parameters": {"columns": [], "pseudonymised": [], "generalised": [], "dropped": [], "k": null, "threshold": null},
	"expiry": null,
	"reasons": ["policy_error: the access policy could not reach a decision; denied"],
	"reviewers": [],
	"notify": [],
}

decision := decide(given, reference)

# ------------------------------------------------------------------ the decision

decide(x, ref) := d if {
	s := settings(ref)
	n := normalise(x, s)
	fatal := problems(n, s)
	c := choose(n, s)
	view := view_of(n, c.chosen)
	late := mode_problems(n, c, view, count(fatal) == 0)
	all_problems := fatal | late
	denied := denied_flag(all_problems, c.chosen)
	status := status_of(denied, c.case, c.chosen, s)
	bounds := expiry_bounds(n, s)
	until := earliest(bounds)
	count_needed := object.get(s.reviewers, [n.sensitivity], null)
	cx := context_reasons(n, c, s, count_needed)
	out := outcome_reasons(n, c, s, status, count_needed, until)
	entries := pick(denied, (all_problems | cx) | fallback(all_problems), cx | out)
	d := {
		"status": status,
		"mode": pick(denied, null, c.chosen),
		"parameters": object.union(pick(denied, {"columns": [], "pseudonymised": [], "generalised": [], "dropped": []}, view), {"k": s.k, "threshold": s.threshold}),
		"expiry": pick(denied, null, day_or_null(until[0])),
		"reasons": [r[1] | some r in sort([e | some e in entries])],
		"reviewers": pick(status == "pending_review", [{"role": "provider", "organisation": n.publisher, "count": count_needed}], []),
		"notify": pick(status == "granted", notified(n), []),
	}
}

denied_flag(all_problems, chosen) := true if {
	count(all_problems) > 0
} else := true if {
	chosen == null
} else := false

status_of(denied, case, chosen, s) := "denied" if {
	denied
} else := "granted" if {
	case in {"open", "internal"}
} else := "granted" if {
	chosen in s.summary
} else := "pending_review"

# The provider is told about every grant of a non-open source made without their review.
notified(n) := [n.publisher] if {
	n.sensitivity != "open"
	n.publisher != null
} else := []

fallback(all_problems) := {["03", "no_mode: no mode could be chosen for this request"] | count(all_problems) == 0}

# ------------------------------------------------------------------ reference data

settings(ref) := {
	"order": order,
	"rank": {m: i | some i, m in order},
	"summary": [m | some m in order; m in summary],
	"k": k,
	"threshold": threshold,
	"min_justification": min_justification,
	"max_days": max_days,
	"known_purposes": known_purposes,
	"compatible": array_at(ref, ["purposes", "compatible"]),
	"reviewers": reviewers,
	"missing": [p[0] | some p in checks; p[1] == false],
} if {
	order := array_at(ref, ["continuum", "order"])
	summary := array_at(ref, ["continuum", "summary_modes"])
	k := number_at(ref, ["thresholds", "k_anonymity"])
	threshold := number_at(ref, ["thresholds", "aggregation"])
	min_justification := number_at(ref, ["thresholds", "raw_justification_min_chars"])
	max_days := number_at(ref, ["limits", "grant_max_days"])
	known_purposes := array_at(ref, ["purposes", "known"])
	reviewers := object_at(ref, ["reviewers", "access"])
	checks := [
		["continuum.order", count(order) > 0],
		["continuum.summary_modes", count(summary) > 0],
		["thresholds.k_anonymity", k != null],
		["thresholds.aggregation", threshold != null],
		["thresholds.raw_justification_min_chars", min_justification != null],
		["limits.grant_max_days", max_days != null],
		["purposes.known", count(known_purposes) > 0],
		["reviewers.access", every_number(reviewers, ["personal", "sensitive"])],
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

# A field's value, null when the field or the object is missing.
value_at(x, key) := v if {
	is_object(x)
	v := x[key]
} else := null

text(x) if {
	is_string(x)
	trim_space(x) != ""
}

text_or_null(x) := x if {
	text(x)
} else := null

is_date(s) if {
	is_string(s)
	regex.match(`^[0-9]{4}-[0-9]{2}-[0-9]{2}$`, s)
	_ = time.parse_ns("2006-01-02", s)
}

date_ns(s) := time.parse_ns("2006-01-02", s) if {
	is_date(s)
} else := null

# YYYY-MM-DD from time.date, not time.format([ns, "UTC", layout]): with pyarrow loaded in the
# same process (as in the controller), regopy's time zone code aborts it (free(): invalid pointer).
day_or_null(ns) := concat("-", [format_int(date[0], 10), two_digits(date[1]), two_digits(date[2])]) if {
	is_number(ns)
	date := time.date(ns)
} else := null

two_digits(x) := concat("", ["0", format_int(x, 10)]) if {
	x < 10
} else := format_int(x, 10)

# ISO 8601 duration as used for retention (P5Y, P18M, P30D, P1Y6M, P6W) -> [years, months, days].
duration(s) := [number_or_zero(p[1]), number_or_zero(p[2]), number_or_zero(p[3])] if {
	is_string(s)
	s != "P"
	matches := regex.find_all_string_submatch_n(`^P(?:([0-9]+)Y)?(?:([0-9]+)M)?(?:([0-9]+)D)?$`, s, 1)
	count(matches) == 1
	p := matches[0]
}

duration(s) := [0, 0, 7 * to_number(matches[0][1])] if {
	is_string(s)
	matches := regex.find_all_string_submatch_n(`^P([0-9]+)W$`, s, 1)
	count(matches) == 1
}

number_or_zero(x) := 0 if x == ""

number_or_zero(x) := to_number(x) if x != ""

# Text assembled with concat, not sprintf: regopy's sprintf mangles string arguments that other
# builtins (concat, lower, sprintf...) produced (they come out wrapped in unescaped quotes).
msg(parts) := concat("", [as_text(p) | some p in parts])

as_text(p) := p if {
	is_string(p)
} else := sprintf("%v", [p])

quoted(names) := concat(", ", [concat("", ["'", n, "'"]) | some n in names])

listed(names) := concat(", ", [as_text(n) | some n in names])

counted(number, noun) := concat("", ["1 ", noun]) if {
	number == 1
} else := msg([number, " ", noun, "s"])

# ------------------------------------------------------------------ input, normalised

# Only small values: regopy passes function arguments by value, so the input document itself
# (with its long descriptions) is never handed around.
normalise(x, s) := {
	"has_project": is_object(value_at(raw, "project")),
	"has_source": is_object(value_at(raw, "source")),
	"has_request": is_object(value_at(raw, "request")),
	"project_id": object.get(project, "id", "(unnamed)"),
	"end_date": value_at(project, "end_date"),
	"members_listed": is_array(value_at(project, "members")),
	"members": {m.username | some m in array_at(project, ["members"]); is_object(m); is_string(m.username)},
	"purpose": value_at(project, "purpose"),
	"legal_basis": text_or_null(value_at(project, "legal_basis")),
	"dpia": text_or_null(value_at(project, "dpia_reference")),
	"source_id": object.get(source, "id", "(unnamed)"),
	"publisher": text_or_null(value_at(source, "publisher")),
	"sensitivity": sensitivity_of(value_at(source, "sensitivity")),
	"schema_size": count(schema),
	"known": {c.name | some c in schema; is_object(c); is_string(c.name); c.name != ""},
	"identifiers": {c.name | some c in schema; is_object(c); c.role == "identifier"},
	"hinted": {c.name | some c in schema; is_object(c); is_object(c.generalisation)},
	"access_modes": access_modes,
	"allowed_modes": [m | some m in s.order; m in access_modes],
	"allowed_purposes": array_at(source, ["allowed_purposes"]),
	"allowed_purposes_given": value_at(source, "allowed_purposes"),
	"retention": value_at(source, "retention"),
	"columns_given": value_at(request, "columns"),
	"columns": requested_columns(request, schema),
	"mode_given": value_at(request, "mode"),
	"mode": requested_mode(request),
	"justification_given": value_at(request, "justification"),
	"justification": justification_of(request),
	"requester": value_at(request, "requester"),
	"now_ns": date_ns(value_at(raw, "now")),
	"end_ns": date_ns(value_at(project, "end_date")),
} if {
	raw := object_or_empty(x)
	project := object_or_empty(value_at(raw, "project"))
	source := object_or_empty(value_at(raw, "source"))
	request := object_or_empty(value_at(raw, "request"))
	schema := array_at(source, ["schema"])
	access_modes := array_at(source, ["access_modes"])
}

object_or_empty(x) := x if {
	is_object(x)
} else := {}

sensitivity_of(s) := s if {
	s in {"open", "internal", "personal", "sensitive"}
} else := null

requested_columns(request, schema) := [c.name | some c in schema; is_object(c); text(c.name)] if {
	value_at(request, "columns") == null
} else := cols if {
	cols := request.columns
	is_array(cols)
	every c in cols {
		is_string(c)
	}
} else := []

requested_mode(request) := m if {
	m := request.mode
	is_string(m)
} else := null

justification_of(request) := j if {
	j := request.justification
	is_string(j)
} else := ""

# ------------------------------------------------------------------ problems: each one denies

problems(n, s) := union({
	reference_problems(s),
	input_problems(n),
	project_problems(n, s),
	source_problems(n, s),
	request_problems(n, s),
})

reference_problems(s) := {["00", t] |
	count(s.missing) > 0
	t := msg(["reference_data_missing: policies/data lacks ", concat(", ", s.missing), "; every request is denied until it is restored"])
}

input_problems(n) := {["01", "invalid_input: 'now' must be a date YYYY-MM-DD given by the controller"] |
	n.now_ns == null
}

project_problems(n, s) := union({
	{["01", "invalid_project: no project in the input"] | not n.has_project},
	{["01", "invalid_project: 'purpose' is missing"] |
		n.has_project
		not text(n.purpose)
	},
	{["01", "invalid_project: 'end_date' must be a date YYYY-MM-DD"] |
		n.has_project
		n.end_ns == null
	},
	{["01", "invalid_project: 'members' must be a list of {username, role}"] |
		n.has_project
		not n.members_listed
	},
	{["02", t] |
		text(n.purpose)
		count(s.known_purposes) > 0
		not n.purpose in s.known_purposes
		t := msg(["unknown_purpose: '", n.purpose, "' is not a purpose the policies know (", concat(", ", s.known_purposes), ")"])
	},
	{["02", t] |
		n.now_ns != null
		n.end_ns != null
		n.now_ns > n.end_ns
		t := msg(["project_ended: project '", n.project_id, "' ended on ", n.end_date, "; no new access is granted"])
	},
})

source_problems(n, s) := union({
	{["01", "invalid_source: no source document in the input"] | not n.has_source},
	{["01", "invalid_source: 'sensitivity' must be one of open, internal, personal, sensitive"] |
		n.has_source
		n.sensitivity == null
	},
	{["01", "invalid_source: 'publisher' (the provider organisation) is missing"] |
		n.has_source
		n.publisher == null
	},
	{["01", "invalid_source: 'schema' must be a non-empty list of named columns, each named once"] |
		n.has_source
		not schema_usable(n)
	},
	{["01", t] |
		n.has_source
		not modes_usable(n, s)
		t := msg(["invalid_source: 'access_modes' must be a non-empty list of modes among ", concat(", ", s.order)])
	},
	{["01", "invalid_source: 'allowed_purposes' must be a list"] |
		p := n.allowed_purposes_given
		p != null
		not is_array(p)
	},
	{["01", t] |
		n.retention != null
		not duration(n.retention)
		t := msg(["invalid_source: retention '", n.retention, "' is not an ISO 8601 duration such as P5Y, P18M, P30D or P6W"])
	},
})

schema_usable(n) if {
	n.schema_size > 0
	count(n.known) == n.schema_size
}

modes_usable(n, s) if {
	count(n.access_modes) > 0
	every m in n.access_modes {
		m in s.order
	}
}

request_problems(n, s) := union({
	{["01", "invalid_request: no request in the input"] | not n.has_request},
	{["01", "invalid_request: 'columns' must be a list of column names"] |
		cols := n.columns_given
		cols != null
		not names(cols)
	},
	{["02", "no_columns: the request names no column"] |
		cols := n.columns_given
		is_array(cols)
		count(cols) == 0
	},
	{["02", t] |
		count({c | some c in n.columns}) < count(n.columns)
		t := msg(["duplicate_column: ", quoted(duplicates(n.columns)), " requested more than once"])
	},
	{["02", t] |
		schema_usable(n)
		unknown := [c | some c in n.columns; not c in n.known]
		count(unknown) > 0
		t := msg(["unknown_column: source '", n.source_id, "' has no column ", quoted(unknown)])
	},
	{["02", t] |
		m := n.mode_given
		m != null
		not m in s.order
		t := msg(["unknown_mode: '", m, "' is not a mode of the continuum (", concat(", ", s.order), ")"])
	},
	{["01", "invalid_request: 'justification' must be text"] |
		j := n.justification_given
		j != null
		not is_string(j)
	},
	{["01", "invalid_request: 'requester' is missing"] |
		n.has_request
		not text(n.requester)
	},
	{["02", t] |
		text(n.requester)
		n.members_listed
		not n.requester in n.members
		t := msg(["not_a_member: '", n.requester, "' is not a member of project '", n.project_id, "'"])
	},
})

names(cols) if {
	is_array(cols)
	every c in cols {
		is_string(c)
	}
}

duplicates(cols) := {c | some i; some j; c := cols[i]; cols[j] == c; i < j}

# ------------------------------------------------------------------ the case, the base mode, the choice

compatible_purposes(n, s) := {p |
	some p in n.allowed_purposes
	p != n.purpose
	some pair in s.compatible
	is_array(pair)
	count(pair) == 2
	{y | some y in pair} == {n.purpose, p}
}

purpose_ok(n, s) := true if {
	n.purpose in n.allowed_purposes
} else := true if {
	count(compatible_purposes(n, s)) > 0
} else := false

eligible(n, s) := true if {
	purpose_ok(n, s)
	n.legal_basis != null
	n.dpia != null
} else := false

# The provider explicitly allows row-level access (a mode more open than the summary modes).
microdata_opened(n, s) := true if {
	some m in n.allowed_modes
	not m in s.summary
} else := false

case_of(n, eligible, opened) := "open" if {
	n.sensitivity == "open"
} else := "internal" if {
	n.sensitivity == "internal"
} else := "personal_review" if {
	n.sensitivity == "personal"
	eligible
} else := "personal_summary" if {
	n.sensitivity == "personal"
} else := "sensitive_review" if {
	n.sensitivity == "sensitive"
	eligible
	opened
} else := "sensitive_summary" if {
	n.sensitivity == "sensitive"
} else := null

justified(n, s) := true if {
	is_number(s.min_justification)
	count(trim_space(n.justification)) >= s.min_justification
} else := false

base_of(case, raw_path, s) := "raw" if {
	case == "open"
} else := "minimised" if {
	case == "internal"
} else := "raw" if {
	raw_path
} else := "pseudonymised" if {
	case in {"personal_review", "sensitive_review"}
} else := m if {
	case in {"personal_summary", "sensitive_summary"}
	m := s.summary[0]
} else := null

chosen_of(wanted, candidates, s) := m if {
	wanted == null
	m := candidates[0]
} else := wanted if {
	wanted in candidates
} else := m if {
	# Bound outside the comprehension: there, regopy reads a bare parameter used as a key
	# (s.rank[wanted]) as a fresh variable.
	wanted_rank := s.rank[wanted]
	m := [c | some c in candidates; s.rank[c] > wanted_rank][0]
} else := m if {
	m := candidates[count(candidates) - 1]
} else := null

choose(n, s) := {
	"eligible": el,
	"opened": op,
	"case": case,
	"review_case": review_case,
	"raw_asked": raw_asked,
	"raw_allowed": raw_allowed,
	"justified": just,
	"base": base,
	"candidates": candidates,
	"chosen": chosen_of(n.mode, candidates, s),
} if {
	el := eligible(n, s)
	op := microdata_opened(n, s)
	case := case_of(n, el, op)
	review_case := case in {"personal_review", "sensitive_review"}
	raw_asked := n.mode == "raw"
	raw_allowed := "raw" in n.access_modes
	just := justified(n, s)
	raw_path := all_true([review_case, raw_asked, raw_allowed, just])
	base := base_of(case, raw_path, s)
	candidates := [m | some m in n.allowed_modes; s.rank[m] >= s.rank[base]]
}

all_true(flags) := true if {
	every f in flags {
		f == true
	}
} else := false

# ------------------------------------------------------------------ parameters of the view

view_of(n, chosen) := {
	"columns": pick(keeps, n.columns, [c | some c in n.columns; not c in n.identifiers]),
	"pseudonymised": pick(chosen == "pseudonymised", requested_identifiers, []),
	"generalised": pick(chosen == "generalised", [c | some c in n.columns; c in n.hinted; not c in n.identifiers], []),
	"dropped": pick(keeps, [], requested_identifiers),
} if {
	keeps := chosen in {"raw", "pseudonymised"}
	requested_identifiers := [c | some c in n.columns; c in n.identifiers]
}

mode_problems(n, c, view, clean) := union({
	{["02", t] |
		clean
		count(c.candidates) == 0
		t := msg(["mode_not_allowed_by_provider: the provider of '", n.source_id, "' allows only ", concat(", ", n.allowed_modes), "; none is as closed as ", c.base, ", the most open mode policy allows here"])
	},
	{["02", t] |
		clean
		c.chosen != null
		count(n.columns) > 0
		count(view.columns) == 0
		t := msg(["only_identifiers: every requested column (", quoted(n.columns), ") is a direct identifier, which the ", c.chosen, " mode removes"])
	},
})

# ------------------------------------------------------------------ expiry

expiry_bounds(n, s) := union({
	{[n.end_ns, "the project end"] | n.end_ns != null},
	{[t, by] |
		n.now_ns != null
		s.max_days != null
		t := time.add_date(n.now_ns, 0, 0, s.max_days)
		by := msg(["the ", s.max_days, "-day policy maximum"])
	},
	{[t, by] |
		n.now_ns != null
		d := duration(n.retention)
		t := time.add_date(n.now_ns, d[0], d[1], d[2])
		by := msg(["the source's retention period (", n.retention, ")"])
	},
})

# The earliest bound and what set it. Not min()/sort() on numbers: regopy compares them as text.
earliest(bounds) := [t, by] if {
	some b in bounds
	t := b[0]
	every other in bounds {
		t <= other[0]
	}
	by := sort([e[1] | some e in bounds; e[0] == t])[0]
} else := [null, null]

# ------------------------------------------------------------------ reasons
# In comprehensions inside functions, calls are made in the body, never in the head (in regopy a
# head that calls a function on the enclosing function's parameters yields nothing), and a bare
# parameter is never used as a key (regopy reads it as a fresh variable).
#
# Each reason is [priority, "code: sentence"]; priorities are two-digit strings because
# regopy's sort() compares numbers as text.

# Why the case is what it is: shown whatever the outcome.
context_reasons(n, c, s, reviewers) := union({
	{["11", t] |
		c.case == "sensitive_review"
		t := msg(["sensitive_data: sensitive data; the provider allows row-level views (", listed([m | some m in n.allowed_modes; not m in s.summary]), "), each approved by ", counted(reviewers, "reviewer"), " of '", n.publisher, "'"])
	},
	{["11", "sensitive_data: sensitive data; the provider allows no row-level view of it, so only aggregated or synthetic views"] |
		c.case == "sensitive_summary"
		c.opened == false
	},
	{["11", "sensitive_data: sensitive data; row-level views need an allowed purpose, a legal basis and a DPIA, so only aggregated or synthetic views"] |
		c.case == "sensitive_summary"
		c.opened == true
	},
	{["12", t] |
		n.sensitivity in {"personal", "sensitive"}
		purpose_ok(n, s) == false
		t := msg(["purpose_not_allowed: the project's purpose '", n.purpose, "' is not among those source '", n.source_id, "' allows (", listed(n.allowed_purposes), "), nor compatible with them; only aggregated or synthetic views"])
	},
	{["12", t] |
		n.sensitivity in {"personal", "sensitive"}
		not n.purpose in n.allowed_purposes
		count(compatible_purposes(n, s)) > 0
		t := msg(["compatible_purpose: the project's purpose '", n.purpose, "' is compatible with ", quoted(compatible_purposes(n, s)), ", which the source allows"])
	},
	{["12", t] |
		n.sensitivity in {"personal", "sensitive"}
		n.legal_basis == null
		t := msg(["no_legal_basis: project '", n.project_id, "' states no legal basis; only aggregated or synthetic views of personal data"])
	},
	{["12", t] |
		n.sensitivity in {"personal", "sensitive"}
		n.dpia == null
		t := msg(["no_dpia: project '", n.project_id, "' gives no DPIA reference; only aggregated or synthetic views of personal data"])
	},
})

# What the outcome is, and how the mode differs from the one asked for or from the base.
outcome_reasons(n, c, s, status, reviewers, until) := union({
	{["10", t] |
		status != "denied"
		c.case == "open"
		t := msg(["open_source: open data, granted in ", c.chosen, " mode"])
	},
	{["10", t] |
		status != "denied"
		c.case == "internal"
		t := msg(["internal_source: internal data, granted in ", c.chosen, " mode; '", n.publisher, "' is notified"])
	},
	{["10", t] |
		status == "pending_review"
		c.chosen == "raw"
		t := msg(["raw_access_review: raw personal data requested with a justification; ", counted(reviewers, "reviewer"), " of '", n.publisher, "' must approve"])
	},
	{["10", t] |
		status == "pending_review"
		c.chosen != "raw"
		t := msg(["personal_data_review: personal data in ", c.chosen, " mode; ", counted(reviewers, "reviewer"), " of '", n.publisher, "' must approve before any access"])
	},
	{["10", t] |
		status == "granted"
		n.sensitivity in {"personal", "sensitive"}
		t := msg(["summary_mode_granted: personal data in ", c.chosen, " mode describes no single person; granted at once, '", n.publisher, "' is notified"])
	},
	{["13", t] |
		status != "denied"
		c.review_case
		c.raw_asked
		c.raw_allowed
		c.justified == false
		t := msg(["raw_needs_justification: raw access needs a justification of at least ", s.min_justification, " characters; ", c.chosen, " offered"])
	},
	{["13", t] |
		status != "denied"
		c.review_case
		c.raw_asked
		c.raw_allowed == false
		t := msg(["mode_not_allowed_by_provider: the provider of '", n.source_id, "' does not allow raw access; ", c.chosen, " offered"])
	},
	{["13", t] |
		status != "denied"
		s.rank[n.mode] < s.rank[c.base]
		not all_true([c.review_case, c.raw_asked])
		t := msg(["more_closed_mode_offered: ", n.mode, " requested, but the most open mode policy allows here is ", c.base, "; ", c.chosen, " offered"])
	},
	{["13", t] |
		status != "denied"
		wanted := mode_wanted(n, c, s)
		wanted != null
		wanted != c.chosen
		not wanted in n.allowed_modes
		t := msg(["mode_not_allowed_by_provider: the provider of '", n.source_id, "' does not allow ", wanted, "; ", c.chosen, " offered, the nearest mode it allows"])
	},
	{["20", t] |
		status != "denied"
		until[0] != null
		t := msg(["expiry: access ends on ", day_or_null(until[0]), ", set by ", until[1]])
	},
})

# The mode the researcher would have had if the provider allowed it.
mode_wanted(n, c, s) := n.mode if {
	s.rank[n.mode] >= s.rank[c.base]
} else := c.base if {
	n.mode == null
} else := null
