"""Wire formats <-> neutral types (ovms.types). Validation of wire structure happens here."""
