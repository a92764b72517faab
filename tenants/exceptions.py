"""Exceptions of the tenancy core."""


class MailwardError(Exception):
    """Base of every Mailward error."""


class ConfigError(MailwardError):
    """A configuration value is missing or invalid; the message names the variable."""


class TenantScopeError(MailwardError):
    """A tenant-owned query or write ran without a scope, or crossed into another tenant."""


class NotFound(MailwardError):
    """The object does not exist in the current scope (another tenant's object looks the same)."""


class SchemaNotCurrent(MailwardError):
    """The database is not migrated to the code's schema revision."""


class ValidationError(MailwardError):
    """A value given by a person or a client is not acceptable; the message says why."""


class PermissionDenied(MailwardError):
    """The caller may see the object but not do this to it (e.g. a user releasing a virus)."""


class TokenError(MailwardError):
    """A signed link token cannot be used."""


class TokenExpired(TokenError):
    """The token's signature is good but it is older than its lifetime."""


class TokenInvalid(TokenError):
    """The token was not made by us with this purpose (bad signature, tampered, or malformed)."""


class TokenUsed(TokenError):
    """A single-use token (a login link) was already spent."""


class IllegalTransition(MailwardError):
    """A delivery row was asked to move between statuses that :data:`tenants.deliveries.TRANSITIONS` does not allow."""
