package rollgate.example.team_label_test

import rego.v1

import data.rollgate.example.team_label

test_plan_with_team_is_allowed if {
	count(team_label.deny) == 0 with input as {"plan": {"metadata": {"name": "a", "labels": {"team": "web"}}}}
}

test_plan_without_team_is_denied if {
	count(team_label.deny) == 1 with input as {"plan": {"metadata": {"name": "a", "labels": {}}}}
}
