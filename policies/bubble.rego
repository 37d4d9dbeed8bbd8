# Bubble profiles: network class, resources and lifetime of a project's bubble.
#
# Entry point: data.bulles.bubble.profile, defined for every input. The bubble may reach the
# internet only when every grant it carries is open data; resources are the requested values
# clamped to the reference maxima (defaults when absent); it expires no later than the project
# end and the earliest grant expiry (`expires`, a last day), nor after `lifetime_hours` from its
# start (counted by the controller, which knows the time of day).
#
# As in access.rego, the profile is a function, decide(input, reference data), which the tests
# call directly (regopy cannot run `with input as ...` tests on policies of this size), and
# comprehensions make their calls in the body, never in the head (a regopy bug).
package bulles.bubble

import rego.v1

default reference := {}

reference := data.bulles.reference

default given := null

given := input

default profile := {
	"allowed": false,
	"network": "none",
	"cpu": 0,
	"memory_mb": 0,
	"disk_mb": 0,
	"lifetime_hours": 0,
	"expires": null,
	"reasons": ["policy_error: the bubble policy could not reach a decision; refused"],
}

profile := decide(given, reference)

resources := ["cpu", "memory_mb", "disk_mb", "lifetime_hours"]

sensitivities := {"open", "internal", "personal", "sensitive"}

# ------------------------------------------------------------------ the profile

decide(x, ref) := {
	"allowed": allowed,
	"network": pick(all_true([allowed, open_only]), "open", "none"),
	"cpu": object.get(values, "cpu", 0),
	"memory_mb": object.get(values, "memory_mb", 0),
	"disk_mb": object.get(values, "disk_mb", 0),
	"lifetime_hours": object.get(values, "lifetime_hours", 0),
	"expires": pick(allowed, day_or_null(until[0]), null),
	"reasons": [r[1] | some r in sort([e | some e in entries])],
} if {
	s := settings(ref)
	n := normalise(x)
	values := {r: v | some r in resources; v := value(n.requested, r, s)}
	issues := problems(n, s)
	allowed := count(issues) == 0
	open_only := all_open(n.grants)
	until := earliest(expiry_bounds(n))
	entries := pick(allowed, union({clamped(n, s), network_notes(n, open_only), expiry_note(until)}), issues)
}

# A resource: the requested value clamped to the maximum, the default when absent or invalid.
value(requested, r, s) := m if {
	v := requested[r]
	positive(v)
	m := s.max[r]
	v > m
} else := v if {
	v := requested[r]
	positive(v)
} else := d if {
	d := s["default"][r]
}

all_open(grants) := true if {
	every g in grants {
		is_object(g)
		g.sensitivity == "open"
	}
} else := false

# ------------------------------------------------------------------ reference data

settings(ref) := {"default": defaults, "max": maxima, "missing": missing} if {
	defaults := object_at(ref, ["limits", "bubble", "default"])
	maxima := object_at(ref, ["limits", "bubble", "max"])
	missing := sort([name |
		some r in resources
		some kind in ["default", "max"]
		not positive(object.get({"default": defaults, "max": maxima}, [kind, r], null))
		name := concat("", ["limits.bubble.", kind, ".", r])
	])
}

# ------------------------------------------------------------------ helpers

pick(condition, when_true, when_false) := when_true if {
	condition
} else := when_false

all_true(flags) := true if {
	every f in flags {
		f == true
	}
} else := false

object_at(x, path) := v if {
	v := object.get(x, path, null)
	is_object(v)
} else := {}

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

positive(x) if {
	is_number(x)
	x > 0
}

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

# Text assembled with concat, not sprintf: regopy's sprintf mangles string arguments that other
# builtins (concat, lower, sprintf...) produced.
msg(parts) := concat("", [as_text(p) | some p in parts])

as_text(p) := p if {
	is_string(p)
} else := sprintf("%v", [p])

grant_name(g) := concat("", ["'", g.source, "'"]) if {
	is_string(g.source)
} else := "without a source id"

# The earliest bound and what set it. Not min()/sort() on numbers: regopy compares them as text.
earliest(bounds) := [t, by] if {
	some b in bounds
	t := b[0]
	every other in bounds {
		t <= other[0]
	}
	by := sort([e[1] | some e in bounds; e[0] == t])[0]
} else := [null, null]

# ------------------------------------------------------------------ input, normalised

normalise(x) := {
	"raw": raw,
	"project": project,
	"project_id": object.get(project, "id", "(unnamed)"),
	"grants": array_or_empty(value_at(raw, "grants")),
	"requested": object_or_empty(value_at(raw, "requested")),
	"now_ns": date_ns(value_at(raw, "now")),
	"end_ns": date_ns(value_at(project, "end_date")),
	"start_ns": date_ns(value_at(project, "start_date")),
} if {
	raw := object_or_empty(x)
	project := object_or_empty(value_at(raw, "project"))
}

# ------------------------------------------------------------------ problems: each one refuses the bubble

problems(n, s) := union({
	{["00", t] |
		count(s.missing) > 0
		t := msg(["reference_data_missing: policies/data lacks ", concat(", ", s.missing)])
	},
	{["01", "invalid_input: 'now' must be a date YYYY-MM-DD given by the controller"] | n.now_ns == null},
	{["01", "invalid_project: no project in the input"] | not is_object(value_at(n.raw, "project"))},
	{["01", "invalid_project: 'end_date' must be a date YYYY-MM-DD"] |
		is_object(value_at(n.raw, "project"))
		n.end_ns == null
	},
	{["01", "invalid_project: 'start_date' must be a date YYYY-MM-DD"] |
		value_at(n.project, "start_date") != null
		n.start_ns == null
	},
	{["01", "invalid_input: 'grants' must be a list"] |
		g := value_at(n.raw, "grants")
		g != null
		not is_array(g)
	},
	{["01", "invalid_input: 'requested' must be an object"] |
		r := value_at(n.raw, "requested")
		r != null
		not is_object(r)
	},
	{["01", t] |
		some i
		g := n.grants[i]
		not is_object(g)
		t := msg(["invalid_grant: grant ", i, " is not an object"])
	},
	{["01", t] |
		some g in n.grants
		is_object(g)
		not g.sensitivity in sensitivities
		t := msg(["invalid_grant: grant ", grant_name(g), " has no valid sensitivity"])
	},
	{["01", t] |
		some g in n.grants
		is_object(g)
		not is_date(g.expiry)
		t := msg(["invalid_grant: grant ", grant_name(g), " has no valid expiry date"])
	},
	{["02", t] |
		n.now_ns != null
		some g in n.grants
		is_object(g)
		expiry := date_ns(g.expiry)
		expiry != null
		expiry < n.now_ns
		t := msg(["grant_expired: the grant of ", grant_name(g), " expired on ", g.expiry])
	},
	{["02", t] |
		n.now_ns != null
		n.end_ns != null
		n.now_ns > n.end_ns
		t := msg(["project_ended: project '", n.project_id, "' ended on ", n.project.end_date])
	},
	{["02", t] |
		n.now_ns != null
		n.start_ns != null
		n.now_ns < n.start_ns
		t := msg(["project_not_started: project '", n.project_id, "' starts on ", n.project.start_date])
	},
	{["01", t] |
		some r in resources
		v := n.requested[r]
		v != null
		not positive(v)
		t := msg(["invalid_request: requested ", r, " must be a positive number, not ", v])
	},
})

# ------------------------------------------------------------------ notes when allowed

clamped(n, s) := {["10", t] |
	some r in resources
	v := n.requested[r]
	positive(v)
	v > s.max[r]
	t := msg(["resource_clamped: ", r, " ", v, " requested, ", s.max[r], " allowed at most"])
}

network_notes(n, open_only) := union({
	{["05", "network_open: every grant is open data; the bubble may reach the internet"] |
		open_only
		count(n.grants) > 0
	},
	{["05", "network_open: no data granted yet; the bubble may reach the internet"] | count(n.grants) == 0},
	{["05", t] |
		not open_only
		closed := sort([x | some x in {g.sensitivity | some g in n.grants; g.sensitivity != "open"}])
		sources := concat(", ", sort([name | some g in n.grants; g.sensitivity != "open"; name := grant_name(g)]))
		t := msg(["network_none: the bubble holds ", concat(", ", closed), " data (", sources, "); it has no network"])
	},
})

# The last day the bubble may run (inclusive): dates only. The lifetime is not among them: `now`
# is a date, so hours counted from it would end on the wrong day; the controller counts
# `lifetime_hours` from the moment the bubble starts, and stops it at the earlier of the two.
expiry_bounds(n) := union({
	{[n.end_ns, "the project end"] | n.end_ns != null},
	{[t, by] |
		some g in n.grants
		is_object(g)
		t := date_ns(g.expiry)
		t != null
		by := concat("", ["the grant of ", grant_name(g)])
	},
})

expiry_note(until) := {["20", t] |
	until[0] != null
	t := msg(["expiry: the bubble ends on ", day_or_null(until[0]), " at the latest, set by ", until[1]])
}
