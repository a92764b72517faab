"""Mail rules: who / what / when → actions, per tenant and as the MSP's baseline every tenant inherits.

``model`` holds the rows, ``schema`` parses and checks a rule's definition (the one format of the web forms, the
API, the CLI and YAML files), ``evaluate`` decides which rules match one recipient of one mail, ``service`` changes
rules (audited, the policy version bumped), ``yamlio`` imports and exports, ``replay`` re-runs stored mail under
draft rules.
"""
