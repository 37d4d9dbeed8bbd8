# Tests of bulles.bubble: network class, resources, lifetime.
package bulles.bubble_test

import rego.v1

import data.bulles.bubble

# The tests call bubble.decide(input, reference data): see bubble.rego for why.
reference := data.bulles.reference

decide(i) := bubble.decide(i, reference)

project := {
	"id": "p1",
	"purpose": "research",
	"legal_basis": "public_task",
	"dpia_reference": "AIPD-2026-01",
	"start_date": "2026-01-01",
	"end_date": "2027-06-30",
	"members": [{"username": "bruno", "role": "owner"}],
}

open_grant := {"source": "fr-en-ips_ecoles", "sensitivity": "open", "mode": "raw", "expiry": "2027-06-30"}

internal_grant := {"source": "personnels", "sensitivity": "internal", "mode": "minimised", "expiry": "2027-03-01"}

personal_grant := {"source": "eleves-synthetiques", "sensitivity": "personal", "mode": "pseudonymised", "expiry": "2027-01-15"}

sensitive_grant := {"source": "pai-sante", "sensitivity": "sensitive", "mode": "aggregated", "expiry": "2027-02-01"}

bubble_input(grants, requested) := {"now": "2026-11-22", "project": project, "grants": grants, "requested": requested}

has_reason(p, code) if {
	some r in p.reasons
	startswith(r, concat("", [code, ": "]))
}

complete(p) if {
	object.keys(p) == {"allowed", "network", "cpu", "memory_mb", "disk_mb", "lifetime_hours", "expires", "reasons"}
	count(p.reasons) > 0
}

refused_for(p, code) if {
	complete(p)
	p.allowed == false
	p.network == "none"
	p.expires == null
	has_reason(p, code)
}

# ------------------------------------------------------------------ network

test_open_data_only_bubble_reaches_the_internet if {
	i := bubble_input([open_grant], {})
	p := decide(i)
	complete(p)
	p.allowed == true
	p.network == "open"
	has_reason(p, "network_open")
}

test_bubble_without_grants_is_open if {
	i := bubble_input([], {})
	p := decide(i)
	p.allowed == true
	p.network == "open"
}

test_bubble_with_missing_grants_list_is_open if {
	i := {"now": "2026-11-22", "project": project}
	p := decide(i)
	p.allowed == true
	p.network == "open"
}

test_personal_data_bubble_has_no_network if {
	i := bubble_input([personal_grant], {})
	p := decide(i)
	p.allowed == true
	p.network == "none"
	has_reason(p, "network_none")
}

test_internal_data_bubble_has_no_network if {
	i := bubble_input([internal_grant], {})
	p := decide(i)
	p.network == "none"
}

test_one_closed_grant_closes_the_bubble if {
	i := bubble_input([open_grant, sensitive_grant, open_grant], {})
	p := decide(i)
	p.allowed == true
	p.network == "none"
}

# ------------------------------------------------------------------ resources

test_defaults_when_nothing_requested if {
	i := bubble_input([open_grant], {})
	p := decide(i)
	p.cpu == 2
	p.memory_mb == 4096
	p.disk_mb == 10240
	p.lifetime_hours == 8
}

test_requested_values_within_the_maxima_are_kept if {
	i := bubble_input([open_grant], {"cpu": 4, "memory_mb": 16384, "disk_mb": 20480, "lifetime_hours": 24})
	p := decide(i)
	p.cpu == 4
	p.memory_mb == 16384
	p.disk_mb == 20480
	p.lifetime_hours == 24
	not has_reason(p, "resource_clamped")
}

test_requested_values_are_clamped_to_the_maxima if {
	i := bubble_input([open_grant], {"cpu": 64, "memory_mb": 1000000, "disk_mb": 102400, "lifetime_hours": 1000})
	p := decide(i)
	p.allowed == true
	p.cpu == 8
	p.memory_mb == 32768
	p.disk_mb == 102400
	p.lifetime_hours == 72
	has_reason(p, "resource_clamped")
}

test_null_request_means_default if {
	i := bubble_input([open_grant], {"cpu": null, "memory_mb": 1024})
	p := decide(i)
	p.allowed == true
	p.cpu == 2
	p.memory_mb == 1024
}

test_negative_request_refused if {
	i := bubble_input([open_grant], {"cpu": -1})
	p := decide(i)
	refused_for(p, "invalid_request")
}

test_text_request_refused if {
	i := bubble_input([open_grant], {"memory_mb": "lots"})
	p := decide(i)
	refused_for(p, "invalid_request")
}

test_maxima_come_from_reference_data if {
	i := bubble_input([open_grant], {"cpu": 64})
	p := bubble.decide(i, json.patch(reference, [{"op": "replace", "path": "/limits/bubble/max/cpu", "value": 16}]))
	p.cpu == 16
}

# ------------------------------------------------------------------ lifetime and expiry

# The lifetime is counted in hours from the start by the controller: `now` is only a date, so
# the last day comes from the project and the grants alone (8 hours from 19:03 end the next day).
test_the_lifetime_does_not_set_the_last_day if {
	i := bubble_input([open_grant], {"lifetime_hours": 8})
	p := decide(i)
	p.lifetime_hours == 8
	p.expires == "2027-06-30"
	has_reason(p, "expiry")
}

test_expires_with_the_earliest_grant if {
	g := object.union(personal_grant, {"expiry": "2026-11-23"})
	i := bubble_input([open_grant, g], {"lifetime_hours": 72})
	p := decide(i)
	p.allowed == true
	p.expires == "2026-11-23"
}

test_expires_with_the_project if {
	i := object.union(bubble_input([open_grant], {"lifetime_hours": 72}), {"now": "2027-06-29"})
	p := decide(i)
	p.allowed == true
	p.expires == "2027-06-30"
}

test_refused_after_the_project_end if {
	i := object.union(bubble_input([open_grant], {}), {"now": "2027-07-01"})
	p := decide(i)
	refused_for(p, "project_ended")
}

test_refused_before_the_project_start if {
	i := object.union(bubble_input([open_grant], {}), {"now": "2025-12-31"})
	p := decide(i)
	refused_for(p, "project_not_started")
}

test_refused_with_an_expired_grant if {
	g := object.union(personal_grant, {"expiry": "2026-11-21"})
	i := bubble_input([g], {})
	p := decide(i)
	refused_for(p, "grant_expired")
}

# ------------------------------------------------------------------ garbage

test_empty_input_refused if {
	p := decide({})
	refused_for(p, "invalid_input")
	has_reason(p, "invalid_project")
}

test_unknown_sensitivity_refused if {
	g := object.union(open_grant, {"sensitivity": "public"})
	i := bubble_input([g], {})
	p := decide(i)
	refused_for(p, "invalid_grant")
}

test_grant_without_expiry_refused if {
	i := bubble_input([object.remove(open_grant, ["expiry"])], {})
	p := decide(i)
	refused_for(p, "invalid_grant")
}

test_grants_not_a_list_refused if {
	i := object.union(bubble_input([], {}), {"grants": "all"})
	p := decide(i)
	refused_for(p, "invalid_input")
}

test_missing_reference_data_refused if {
	i := bubble_input([open_grant], {})
	p := bubble.decide(i, {})
	refused_for(p, "reference_data_missing")
}
