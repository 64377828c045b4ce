# Case policy-error-conflicting-rule: two different values for one complete rule, so
# evaluating the policy fails.
package rollgate.corpus.owner

import rego.v1

owner := input.plan.metadata.labels.team

owner := "nobody"

deny contains msg if {
	owner == "nobody"
	msg := "the plan has no owner"
}
