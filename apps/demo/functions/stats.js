// A cloud function of the demo app: POST /v1/fn/demo/stats/salaryStats?csrf=... with
// {"gender": "F"} (or {} for everyone) answers, per `active` flag, how many employees there are
// and their average salary.
export async function salaryStats(arg) {
  const filter = arg && arg.gender ? [{ gender: { is: arg.gender } }] : [];
  return db.find("Employees", {
    filter,
    groupByAttributeCodeList: ["active"],
    aggregateList: [
      { fn: "count", alias: "employees" },
      { fn: "avg", attributeCode: "salary", alias: "averageSalary" },
    ],
    sort: { active: 1 },
  });
}
