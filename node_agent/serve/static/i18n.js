// Fenji workstation: the page's own texts in each language. Feature names, categories, tiers and
// answers come from the server (the task spec and the Assessment), never from here.
"use strict";

const UI = {
  zh: {
    subtitle: "基层首诊辅助评估", logout: "退出", login_title: "登录", token: "访问令牌", login: "登录",
    login_hint: "请输入站点管理员发放的访问令牌。令牌只保存在本浏览器标签页中。",
    bad_token: "令牌无效或已被撤销", not_doctor: "此令牌的角色（{role}）不能评估病人，请使用医生令牌。",
    patient: "病人首诊信息", encounter_id: "门诊号", clear: "清空", score: "评估",
    empty: "填写左侧的首诊信息后点击“评估”。", triage: "分诊级别", referral_risk: "需上级医疗的风险",
    recommended_tier: "建议就诊层级", diagnoses: "可能的诊断（前三位）", explanation: "影响转诊风险的因素",
    raises: "升高风险", lowers: "降低风险", decision: "医生决定", treat_here: "在本院处理",
    refer_county: "转诊至县级医院", refer_tertiary: "转诊至三级医院", record: "记录决定", close: "关闭",
    note_placeholder: "备注（可选）", section_required: "必填项", section_numeric: "生命体征与评分",
    section_categorical: "其他信息", section_boolean: "既往史", not_recorded_option: "— 未记录 —",
    choose: "请选择", yes: "是", no: "否", range: "范围", out_of_range: "超出 {min}–{max}，提交后由系统核对",
    not_recorded: "未记录（按缺失处理）：", triage_probs: "各级概率 ", model: "模型", model_card: "模型说明",
    fix_fields: "请更正标红的字段", choose_decision: "请选择一个决定", scoring: "评估中…",
    recorded: "已记录决定（编号 {id}，{time}）", stale: "首诊信息已修改：请重新评估后再记录决定", error: "出错了：", session_expired: "登录已过期，请重新登录",
  },
  en: {
    subtitle: "First-visit decision support", logout: "Log out", login_title: "Log in", token: "Access token",
    login: "Log in", login_hint: "Enter the access token your site admin gave you. It is kept in this browser tab only.",
    bad_token: "Unknown or revoked token", not_doctor: "This token's role ({role}) cannot score patients; use a doctor's token.",
    patient: "First-visit data", encounter_id: "Encounter", clear: "Clear", score: "Assess",
    empty: "Fill in the first-visit data on the left and press “Assess”.", triage: "Triage level",
    referral_risk: "Risk of needing a higher tier", recommended_tier: "Recommended tier",
    diagnoses: "Likely diagnoses (top 3)", explanation: "What drives the referral risk", raises: "raises risk",
    lowers: "lowers risk", decision: "Doctor's decision", treat_here: "Treat here", refer_county: "Refer to county",
    refer_tertiary: "Refer to tertiary", record: "Record decision", close: "Close", note_placeholder: "Note (optional)",
    section_required: "Required", section_numeric: "Vital signs and scores", section_categorical: "Other",
    section_boolean: "History", not_recorded_option: "— not recorded —", choose: "Choose", yes: "Yes", no: "No",
    range: "range", out_of_range: "outside {min}–{max}; the server will check it",
    not_recorded: "Not recorded (scored as missing): ", triage_probs: "By level ", model: "Model", model_card: "model card",
    fix_fields: "Please correct the fields marked in red", choose_decision: "Choose a decision", scoring: "Assessing…",
    recorded: "Decision recorded (id {id}, {time})",
    stale: "The data changed: assess again before recording a decision", error: "Error: ", session_expired: "Session expired; please log in again",
  },
};
