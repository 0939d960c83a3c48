//! The OKOME control plane: tenants, hashed API keys, model routes; never in the token path.
