-- Columns of the given tables in attribute order. `binary_safe` is false where binary COPY
-- would carry a type OID that differs between two clusters (composite values, arrays of
-- user-defined types) or where the type has no binary I/O; such tables are copied as text.
SELECT a.attrelid                                  AS relid,
       a.attname                                   AS name,
       format_type(a.atttypid, a.atttypmod)        AS type_name,
       a.attgenerated <> ''                        AS generated,
       a.attnotnull                                AS not_null,
       (bt.typtype IN ('b', 'e', 'r', 'm')
        AND bt.typsend <> 0 AND bt.typreceive <> 0
        AND NOT (bt.typelem <> 0 AND bt.typlen = -1 AND bt.typelem >= 16384)) AS binary_safe
  FROM pg_attribute a
  JOIN pg_type t ON t.oid = a.atttypid
  JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
 WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attrelid, a.attnum
