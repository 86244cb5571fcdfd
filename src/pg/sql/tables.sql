-- Every ordinary or partitioned table outside the system schemas and pgcutover's own, with
-- what the selection, the preflight and the load planner need to know about it.
-- Tables that belong to an extension are left out: CREATE EXTENSION makes them on the target.
SELECT c.oid                                   AS oid,
       n.nspname                               AS schema,
       c.relname                               AS name,
       c.relkind::text                         AS relkind,
       c.relispartition                        AS is_partition,
       rn.nspname                              AS root_schema,
       r.relname                               AS root_name,
       c.relpersistence::text                  AS persistence,
       c.relreplident::text                    AS replident,
       EXISTS (SELECT 1 FROM pg_index i
                WHERE i.indrelid = c.oid AND i.indisprimary)   AS has_pk,
       EXISTS (SELECT 1 FROM pg_index i
                WHERE i.indrelid = c.oid AND i.indisreplident) AS has_identity_index,
       pg_relation_size(c.oid)::int8           AS bytes,
       pg_has_role(c.relowner, 'USAGE')        AS owned,
       has_table_privilege(c.oid, 'SELECT')    AS can_select
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_class r ON c.relispartition AND r.oid = pg_partition_root(c.oid)
  LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace
 WHERE c.relkind IN ('r', 'p')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgcutover')
   AND n.nspname NOT LIKE 'pg\_toast%'
   AND n.nspname NOT LIKE 'pg\_temp%'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.deptype = 'e')
 ORDER BY n.nspname, c.relname
