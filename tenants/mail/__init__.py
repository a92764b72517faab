"""Mail content as the tenancy core keeps it: MIME text and limits, the quarantine preview, the Bayes store."""
