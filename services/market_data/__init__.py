"""Market data: the quote wire format, the quote store and the API-side hub and mirror, securities, bars and the market clock."""
