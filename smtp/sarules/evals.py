"""SpamAssassin's ``eval:`` tests: the ones Mailward implements (:data:`EVALS`, in :mod:`evals_head` and
:mod:`evals_body`) and the ones it skips by design, with the reason the load report shows.

Network, Bayes, reputation and DNS-list tests are not run: Mailward has its own checks for those (DNSBL, URIBL, SPF,
DKIM, DMARC, Bayes and the content model); the per-user welcome/block lists are Mailward's own lists. Their rules
count as not hit in meta rules, as in ``spamd -L`` with Bayes off.
"""

from __future__ import annotations

from smtp.sarules import evals_body, evals_head  # noqa: F401  (importing them registers their evals)
from smtp.sarules.evalbase import EVALS, EvalEnv

__all__ = ["EVALS", "EvalEnv", "SKIPPED_BY_DESIGN"]

#: Evals not run by design, by the reason shown in the load report.
SKIPPED_BY_DESIGN: dict[str, str] = {}
_NETWORK = "network/bayes (Mailward's own checks)"
_LISTS = "welcome/block lists (Mailward's own lists)"
for _name in ("check_rbl check_rbl_sub check_rbl_txt check_rbl_from_host check_rbl_from_domain check_rbl_envfrom "
              "check_rbl_headers check_rbl_ns_from check_rbl_rcvd check_uridnsbl check_uri_host_listed "
              "check_hashbl_bodyre check_hashbl_emails check_hashbl_uris check_bayes check_dcc "
              "check_dcc_reputation_range "
              "check_razor2 check_razor2_range check_pyzor check_dkim_valid check_dkim_signed check_dkim_adsp "
              "check_dkim_dependable check_dkim_testing check_dkim_signsome check_dkim_signall "
              "check_dkim_valid_author_sig check_dkim_valid_envelopefrom check_arc_valid check_arc_signed "
              "check_for_spf_pass check_for_spf_neutral check_for_spf_none check_for_spf_fail check_for_spf_softfail "
              "check_for_spf_permerror check_for_spf_temperror check_for_spf_helo_pass check_for_spf_helo_neutral "
              "check_for_spf_helo_none check_for_spf_helo_fail check_for_spf_helo_softfail "
              "check_for_spf_helo_permerror check_for_spf_helo_temperror check_dmarc_pass check_dmarc_reject "
              "check_dmarc_quarantine check_dmarc_none check_dmarc_missing check_dns_sender "
              "check_from_in_auto_welcomelist check_from_in_auto_whitelist check_senders_reputation "
              "check_access_database check_language check_shortcircuit check_https_ip_mismatch short_url "
              "short_url_chained check_suspect_name check_microsoft_executable pdf_match_details pdf_image_size_range "
              "pdf_is_encrypted pdf_is_empty_body pdf_image_to_text_ratio").split():
    SKIPPED_BY_DESIGN[_name] = _NETWORK
for _name in ("check_from_in_blocklist check_from_in_blacklist check_from_in_welcomelist check_from_in_whitelist "
              "check_to_in_blocklist check_to_in_blacklist check_to_in_welcomelist check_to_in_whitelist "
              "check_to_in_all_spam check_to_in_more_spam check_uri_host_in_blocklist check_uri_host_in_blacklist "
              "check_uri_host_in_welcomelist check_uri_host_in_whitelist check_subject_in_welcomelist "
              "check_subject_in_whitelist check_subject_in_blocklist check_subject_in_blacklist "
              "check_from_in_default_welcomelist check_from_in_default_whitelist check_for_dkim_welcomelist_from "
              "check_for_dkim_whitelist_from check_for_def_dkim_welcomelist_from check_for_def_dkim_whitelist_from "
              "check_for_spf_welcomelist_from check_for_spf_whitelist_from check_for_def_spf_welcomelist_from "
              "check_for_def_spf_whitelist_from check_welcomelist_bounce_relays check_whitelist_bounce_relays").split():
    SKIPPED_BY_DESIGN[_name] = _LISTS


