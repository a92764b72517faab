"""SMTP: the aiosmtpd ingress, the check pipeline, MIME handling and the outbound client."""
