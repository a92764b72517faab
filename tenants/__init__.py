"""The tenancy core: configuration, models, the tenant scope and policy. Imports no other Mailward package."""
